"""build_strategy: "auto" for one process, a configured DDPStrategy otherwise, same maths either way."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

from zflight.run.strategy import DDP_DEFAULTS, build_strategy, process_count


def test_single_process_is_auto():
    assert build_strategy(1, 1, {}) == "auto"
    assert build_strategy(1, 1, None) == "auto"


def test_devices_minus_one_counts_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert process_count(-1, 1) == 1 and build_strategy(-1, 1, {}) == "auto"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert process_count(-1, 2) == 8
    with pytest.raises(ValueError, match="devices and num_nodes"):
        process_count(0, 1)


def test_ddp_defaults_reach_distributed_data_parallel(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    s = build_strategy(2, 1, {})
    assert isinstance(s, DDPStrategy)
    assert s.process_group_backend == "gloo"
    assert s._ddp_kwargs == {
        "gradient_as_bucket_view": True,
        "static_graph": False,
        "bucket_cap_mb": 25.0,
        "find_unused_parameters": False,
    }
    assert s._ddp_comm_hook is None


def test_ddp_options_are_passed_and_cuda_picks_nccl(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    opts = {
        "gradient_as_bucket_view": False,
        "static_graph": True,
        "bucket_cap_mb": 100,
        "comm_hook": "bf16",
    }
    s = build_strategy(1, 4, opts)
    assert s.process_group_backend == "nccl"
    assert s._ddp_kwargs["static_graph"] is True and s._ddp_kwargs["bucket_cap_mb"] == 100.0
    assert s._ddp_kwargs["gradient_as_bucket_view"] is False
    assert s._ddp_comm_hook is default_hooks.bf16_compress_hook
    assert build_strategy(2, 1, {"backend": "gloo"}).process_group_backend == "gloo"


@pytest.mark.parametrize(
    "bad,match",
    [
        ({"bucket_size": 5}, "no key.*bucket_size.*valid: gradient_as_bucket_view"),
        ({"comm_hook": "int8"}, "comm_hook must be one of none, fp16, bf16"),
        ({"bucket_cap_mb": 0}, "bucket_cap_mb must be > 0"),
    ],
)
def test_bad_options_fail_naming_the_key(bad, match):
    with pytest.raises(ValueError, match=match):
        build_strategy(2, 1, bad)
    assert set(DDP_DEFAULTS) >= {"gradient_as_bucket_view", "static_graph", "bucket_cap_mb"}


SCRIPT = textwrap.dedent("""
    import json, sys
    import lightning.pytorch as pl
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
    from zflight.run.strategy import build_strategy

    g = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(32, 6, generator=g), torch.randint(0, 3, (32,), generator=g))

    class Net(pl.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
        def training_step(self, batch, i):
            return nn.functional.cross_entropy(self.net(batch[0]), batch[1])
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
        def train_dataloader(self):  # rank r takes samples r, r+2, ...: in order, no shuffling
            return DataLoader(data, batch_size=4, sampler=DistributedSampler(data, shuffle=False))

    model = Net()
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy=build_strategy(2, 1, json.loads(sys.argv[2])),
                         max_epochs=1, logger=False, enable_checkpointing=False, use_distributed_sampler=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model)
    if trainer.global_rank == 0:
        torch.save(model.net.state_dict(), sys.argv[1])
""")


@pytest.mark.slow
def test_two_process_gloo_ddp_equals_single_process_full_batches(tmp_path):
    script, out = tmp_path / "ddp_run.py", tmp_path / "weights.pt"
    script.write_text(SCRIPT)
    opts = {"static_graph": True, "bucket_cap_mb": 0.0002, "gradient_as_bucket_view": True}
    done = subprocess.run(
        [sys.executable, str(script), str(out), json.dumps(opts)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # Two ranks of batch 4 (interleaved samples) = one process with batch 8 in order.
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 6, generator=g), torch.randint(0, 3, (32,), generator=g)
    for i in range(0, 32, 8):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x[i : i + 8]), y[i : i + 8]).backward()
        opt.step()
    got = torch.load(out)
    for name, value in net.state_dict().items():
        torch.testing.assert_close(got[name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_process_group_is_destroyed_at_exit(tmp_path, monkeypatch):
    """A gloo group left alive at interpreter exit aborts a rank now and then (SIGABRT)."""
    import atexit

    import torch.distributed as dist

    from zflight.callbacks import process_group
    from zflight.run.strategy import CleanExitDDPStrategy

    registered = []
    monkeypatch.setattr(atexit, "register", registered.append)
    monkeypatch.setattr(process_group, "_registered", False)
    process_group.destroy_process_group_at_exit()
    process_group.destroy_process_group_at_exit()
    assert registered == [process_group._destroy], "registered once per process"
    assert isinstance(build_strategy(2, 1, {"backend": "gloo"}), CleanExitDDPStrategy)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    registered[0]()
    assert not dist.is_initialized()
    registered[0]()  # nothing left to destroy: a no-op
