"""FilterHealth and FilterRenorm: figures, scalars, alerts, streaming statistics, the RMS rule."""

from __future__ import annotations

import json
import types
import warnings

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from zflight.analysis.filters import filter_health, filter_rms
from zflight.callbacks import filter_health as fh
from zflight.callbacks.filter_health import STATUS_COLOURS, FilterHealth, filter_grid, spectra_grid
from zflight.callbacks.renorm import FilterRenorm, renormalize_filters
from zflight.callbacks.results import Probe
from zflight.models import zfnet


def fake_ctx(epoch: int = 0, rank: int = 0) -> types.SimpleNamespace:
    return types.SimpleNamespace(epoch=epoch, rank=rank, world_size=1, all_gather=lambda t: t)


def tiny_zfnet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return zfnet(num_classes=4, width=0.125, head_pool=1).eval()


class Classifier(pl.LightningModule):
    """A bare LightningModule around a network (SGD, cross-entropy)."""

    def __init__(self, model: nn.Module, lr: float = 0.5) -> None:
        super().__init__()
        self.model, self.lr = model, lr

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self.model(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", F.cross_entropy(self.model(batch[0]), batch[1]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def loader(n: int = 16, size: int = 64, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    data = TensorDataset(
        torch.randn(n, 3, size, size, generator=g), torch.randint(0, 4, (n,), generator=g)
    )
    return DataLoader(data, batch_size=8)


def trainer(tmp_path, callbacks, **kw) -> pl.Trainer:
    kw.setdefault("devices", 1)
    return pl.Trainer(
        default_root_dir=str(tmp_path),
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=callbacks,
        **kw,
    )


# ---- FilterRenorm --------------------------------------------------------------------------------
def test_renormalize_clips_only_filters_above_the_radius():
    conv = nn.Conv2d(3, 6, 7)
    with torch.no_grad():
        conv.weight.mul_(torch.tensor([0.1, 5.0, 20.0, 1.0, 0.5, 8.0]).view(-1, 1, 1, 1))
    before = conv.weight.detach().clone()
    over = filter_rms(before) > 0.1
    assert over.any() and not over.all()
    assert renormalize_filters([conv], 0.1) == int(over.sum())
    after = conv.weight.detach()
    assert filter_rms(after).max() <= 0.1 + 1e-6
    assert torch.equal(after[~over], before[~over])
    assert torch.allclose(filter_rms(after[over]), torch.full((int(over.sum()),), 0.1), atol=1e-6)
    assert torch.allclose(
        F.cosine_similarity(after.flatten(1), before.flatten(1)), torch.ones(6), atol=1e-6
    )


def test_renormalize_bf16_weights_computes_in_fp32():
    conv = nn.Conv2d(3, 8, 7).to(torch.bfloat16)
    with torch.no_grad():
        conv.weight.mul_(30)
    renormalize_filters([conv], 0.1)
    assert conv.weight.dtype == torch.bfloat16
    assert filter_rms(conv.weight).max() <= 0.1 * (1 + 2**-7)  # one bf16 rounding


def test_renorm_layers_by_name_and_unknown_names():
    model = tiny_zfnet()
    convs = FilterRenorm(layers=["conv1", "features.conv3"]).convs(model)
    assert convs == [model.features.conv1, model.features.conv3]
    assert len(FilterRenorm().convs(model)) == 5
    with pytest.raises(ValueError, match="no Conv2d named 'fc6'"):
        FilterRenorm(layers=["fc6"]).convs(model)
    with pytest.raises(ValueError, match="radius"):
        FilterRenorm(radius=0.0)


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_every_training_forward_sees_clipped_filters(tmp_path, precision):
    model = tiny_zfnet().train()
    seen: list[float] = []
    model.features.conv1.register_forward_pre_hook(
        lambda m, a: seen.append(float(filter_rms(m.weight).max())) if m.training else None
    )
    module = Classifier(model, lr=2.0)
    renorm = FilterRenorm(radius=0.1, layers=["conv1"])
    trainer(tmp_path, [renorm], max_epochs=2, precision=precision, limit_val_batches=0).fit(
        module, loader()
    )
    # every forward, the first (right after init) included, and the weights after the last step
    assert len(seen) == 4 and max(seen) <= 0.1 + 1e-6
    assert filter_rms(model.features.conv1.weight).max() <= 0.1 + 1e-6
    assert renorm.clipped > 0
    assert filter_rms(model.features.conv2.weight).max() > 0.1  # not in ``layers``: left alone


# ---- FilterHealth: analysis and figures ----------------------------------------------------------
def probe(n: int = 2) -> Probe:
    g = torch.Generator().manual_seed(1)
    return Probe(torch.randn(n, 3, 64, 64, generator=g), torch.zeros(n, dtype=torch.long), None)


def test_analyze_reports_the_analysis_of_each_layer():
    model = tiny_zfnet()
    with torch.no_grad():
        model.features.conv1.weight[2] *= 1e-4
        result = FilterHealth(layers=["conv1", "conv2"]).analyze(model, probe(), fake_ctx())
    assert set(result.figures) == {
        "conv1/filters",
        "conv1/spectra",
        "conv2/filters",
        "conv2/spectra",
        "conv2/projections",
    }
    for fig in result.figures.values():
        assert fig.image.dtype == np.uint8 and fig.image.ndim == 3 and fig.image.shape[2] == 3
    for layer in ("conv1", "conv2"):
        conv = model.layer(layer)
        expected = filter_health(conv.weight, conv.stride[0]).scalars()
        assert {k: result.scalars[f"{layer}/{k}"] for k in expected} == pytest.approx(expected)
    assert result.scalars["conv1/dead"] == pytest.approx(1 / 12)
    assert "1 dead" in result.figures["conv1/filters"].caption
    assert 0.0 <= result.scalars["conv2/gridding"] < 1.0


def test_dead_filter_tile_is_flat_gray_in_a_black_frame():
    w = torch.randn(5, 3, 7, 7, generator=torch.Generator().manual_seed(2))
    w[3] *= 1e-4
    img = filter_grid(w, filter_health(w, 2), ncols=5, tile=42)
    side = 7 * 6 + 2 * 3  # 7 taps x 6, 3-pixel frame
    x0, y0 = 2 + 3 * (side + 2), 2  # grid padding 2
    tile = img[y0 : y0 + side, x0 : x0 + side]
    assert (tile[:3] == STATUS_COLOURS["dead"]).all()
    inner = tile[3:-3, 3:-3].astype(int)
    # shared symmetric scale: a near-zero filter is mid-gray
    assert np.abs(inner - 128).max() <= 1
    neighbour = img[y0 : y0 + side, x0 - side - 2 : x0 - 2]
    assert (neighbour[:3] == STATUS_COLOURS["aliased"]).all()  # random filters look aliased
    assert np.abs(neighbour[3:-3, 3:-3].astype(int) - 128).max() > 60


def test_spectra_grid_draws_the_nyquist_square():
    w = torch.randn(2, 3, 7, 7, generator=torch.Generator().manual_seed(3))
    img = spectra_grid(w, stride=2, ncols=2, n_fft=32, factor=2)
    tile = img[2:66, 2:66]
    lo, hi = (16 - 8) * 2, (16 + 8 + 1) * 2 - 1  # bins |i - 16| <= 8 are inside 1/4 cycles/pixel
    assert (tile[lo, lo : hi + 1] == fh.NYQUIST_COLOUR).all()
    assert (tile[lo : hi + 1, hi] == fh.NYQUIST_COLOUR).all()
    assert not (tile[lo + 3, lo + 3] == fh.NYQUIST_COLOUR).all()


def test_alerts_wait_for_warmup_and_fire_on_crossing(monkeypatch):
    sent: list[str] = []
    monkeypatch.setattr(fh, "_wandb_alert", lambda title, text: sent.append(title))
    cb = FilterHealth(alert_thresholds={"aliased": 0.5}, warmup_epochs=2)

    def run(epoch: int, value: float, rank: int = 0) -> list[str]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cb._alert({"conv1/aliased": value, "conv1/dead": 1.0}, fake_ctx(epoch, rank))
        return [str(w.message) for w in caught]

    assert run(0, 0.9) == [] and run(1, 0.9) == []  # warm-up
    assert len(run(2, 0.9)) == 1 and sent == ["filter health: conv1/aliased"]
    assert run(3, 0.95) == []  # still above: no repeat
    assert run(4, 0.2) == []
    assert len(run(5, 0.7, rank=1)) == 1 and len(sent) == 1  # warns again; W&B only from rank 0
    restored = FilterHealth(alert_thresholds={"aliased": 0.5}, warmup_epochs=2)
    restored.load_state_dict(cb.state_dict())
    assert restored.above == {"conv1/aliased": True}


def test_wandb_alert_only_for_an_online_run_and_never_raises(monkeypatch):
    import wandb

    class FakeRun:
        def __init__(self, offline: bool, fail: bool = False) -> None:
            self.offline, self.disabled, self.fail, self.sent = offline, False, fail, []

        def alert(self, title: str, text: str) -> None:
            if self.fail:
                raise ConnectionError("no network")
            self.sent.append((title, text))

    for offline, expected in ((True, []), (False, [("t", "x")])):
        run = FakeRun(offline)
        monkeypatch.setattr(wandb, "run", run)
        fh._wandb_alert("t", "x")
        assert run.sent == expected
    monkeypatch.setattr(wandb, "run", FakeRun(False, fail=True))
    with pytest.warns(UserWarning, match="could not send a W&B alert"):
        fh._wandb_alert("t", "x")
    monkeypatch.setattr(wandb, "run", None)
    fh._wandb_alert("t", "x")  # no run at all: nothing to do


# ---- FilterHealth in a validation loop: activation statistics ------------------------------------
def test_channel_forced_off_is_dead_by_validation_statistics(tmp_path):
    model = tiny_zfnet()
    with torch.no_grad():
        model.features.conv1.bias[7] = -1e3
    cb = FilterHealth(layers=["conv1"], gridding_layer=None, num_probes=2, strict=True)
    trainer(tmp_path, [cb]).validate(Classifier(model), loader(n=12))
    rows = [
        json.loads(line) for line in (tmp_path / "viz" / "scalars.jsonl").read_text().splitlines()
    ]
    scalars = {r["key"]: r["value"] for r in rows}
    assert scalars["filters/conv1/never_active"] == pytest.approx(1 / 12)
    assert scalars["filters/conv1/dead"] == pytest.approx(1 / 12)
    assert (tmp_path / "viz" / "filters" / "conv1" / "filters" / "epoch_0000.png").exists()
    assert cb._positive["conv1"][7] == 0 and bool((cb._positive["conv1"][:7] > 0).all())
    direct = model.features.conv1(loader(n=12).dataset.tensors[0]) > 0
    assert int(cb._positive["conv1"].sum()) == int(direct.sum())


# ---- DDP: two CPU processes (gloo) ---------------------------------------------------------------
class _CheckRanksAgree(pl.Callback):
    """Gathers conv1 from every rank at the end of training and records whether all ranks agree."""

    def __init__(self, out: str) -> None:
        self.out = out

    def on_train_end(self, trainer, pl_module):
        w = pl_module.all_gather(pl_module.model.features.conv1.weight.detach())
        same = bool((w == w[0]).all())
        rms = float(filter_rms(pl_module.model.features.conv1.weight).max())
        with open(f"{self.out}/rank{trainer.global_rank}.json", "w") as f:
            json.dump({"same": same, "rms": rms}, f)


@pytest.mark.slow
def test_ddp_renorm_keeps_ranks_identical_and_statistics_merge(tmp_path):
    model = tiny_zfnet().train()
    with torch.no_grad():
        model.features.conv1.bias.fill_(1.0)
        model.features.conv1.bias[7] = -1.0
        model.features.conv1.weight[7].abs_()
    val = torch.zeros(4, 3, 64, 64)
    val[1] = 100.0  # only this sample (rank 1's shard) turns channel 7 on
    val_loader = DataLoader(TensorDataset(val, torch.zeros(4, dtype=torch.long)), batch_size=2)
    cb = FilterHealth(layers=["conv1"], gridding_layer=None, num_probes=2, strict=True)
    ddp = trainer(
        tmp_path,
        [FilterRenorm(), cb, _CheckRanksAgree(str(tmp_path))],
        devices=2,
        strategy="ddp_spawn",
        max_epochs=1,
        limit_train_batches=2,
    )
    ddp.fit(Classifier(model, lr=1e-3), loader(n=32), val_loader)
    for rank in (0, 1):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert result["same"] and result["rms"] <= 0.1 + 1e-6
    rows = [
        json.loads(line) for line in (tmp_path / "viz" / "scalars.jsonl").read_text().splitlines()
    ]
    scalars = {r["key"]: r["value"] for r in rows}
    assert scalars["filters/conv1/never_active"] == 0.0  # rank 0 alone never saw channel 7 positive


# ---- the ablation entry point --------------------------------------------------------------------
def test_ablation_arguments_and_overrides_are_valid_configs(tmp_path):
    from zflight import ablation
    from zflight.config import ConfigError, load_config
    from zflight.train import build_callbacks

    cfg, extra = ablation.parse_args(
        ["epochs=3", "renorm=zfnet", "data.train_size=100", "logger=none"]
    )
    assert (cfg.epochs, cfg.renorm, extra) == (3, "zfnet", ["data.train_size=100", "logger=none"])
    for bad in (["renorm=sometimes"], ["epochs"], ["epochs=many"]):
        with pytest.raises(ConfigError):
            ablation.parse_args(bad)
    for arm, has_renorm in (("alexnet_style", False), ("zfnet", True)):
        train_cfg = load_config(ablation.arm_overrides(arm, cfg, tmp_path / arm, extra))
        got = (train_cfg.model.name, train_cfg.trainer.max_epochs, train_cfg.data.train_size)
        assert got == (arm, 3, 100)
        assert train_cfg.logger.name == "none"  # the user's override comes last and wins
        kinds = [type(c) for c in build_callbacks(train_cfg)]
        assert kinds == ([FilterHealth, FilterRenorm] if has_renorm else [FilterHealth])


def test_ablation_report_from_logged_scalars(tmp_path):
    from zflight import ablation

    values = {
        "alexnet_style": {
            "conv1/dead": 0.25,
            "conv1/aliased": 0.5,
            "conv1/mid_band": 0.1,
            "conv2/gridding": 0.02,
        },
        "zfnet": {
            "conv1/dead": 0.0,
            "conv1/aliased": 0.75,
            "conv1/mid_band": 0.4,
            "conv2/gridding": 0.02,
        },
    }
    results = {}
    for arm, finals in values.items():
        run = tmp_path / arm
        (run / "viz" / "filters" / "conv1" / "filters").mkdir(parents=True)
        Image.fromarray(np.zeros((10, 20, 3), np.uint8)).save(
            run / "viz" / "filters" / "conv1" / "filters" / "epoch_0001.png"
        )
        with open(run / "viz" / "scalars.jsonl", "w") as f:
            for epoch, scale in ((0, 2.0), (1, 1.0)):  # the report must take the last epoch
                for key, v in finals.items():
                    row = {
                        "epoch": epoch,
                        "step": epoch,
                        "key": f"filters/{key}",
                        "value": v * scale,
                    }
                    f.write(json.dumps(row) + "\n")
        (run / "csv").mkdir()
        (run / "csv" / "metrics.csv").write_text("epoch,step,val/acc1\n0,9,0.5\n1,19,0.75\n")
        results[arm] = {"run_dir": run, "val_acc1": 0.75, "val_acc5": 1.0}
    assert ablation.read_accuracy(tmp_path / "zfnet") == [(0, 0.5), (1, 0.75)]
    path = ablation.write_report(
        tmp_path,
        ablation.AblationConfig(epochs=2),
        [],
        results,
        {"alexnet_style": 1.0, "zfnet": 2.0},
    )
    text = path.read_text()
    assert "- conv1 dead fraction: AlexNet-style 0.250, ZFNet 0.000 (as in the paper)" in text
    assert "- conv1 aliased fraction: AlexNet-style 0.500, ZFNet 0.750 (opposite to" in text
    assert "- conv1 mid-band share: AlexNet-style 0.100, ZFNet 0.400 (as in the paper)" in text
    assert "- conv2 gridding score: AlexNet-style 0.020, ZFNet 0.020 (no difference)" in text
    assert ablation.noise_reference(7, 2)[0] == pytest.approx(1 - (33 / 64) ** 2)
    assert ablation.noise_reference(11, 4)[0] == pytest.approx(1 - (17 / 64) ** 2)
    for png in ("filters.png", "curves.png", "report.png"):
        assert Image.open(tmp_path / png).size[0] > 100


@pytest.mark.slow
def test_ablation_end_to_end_on_a_tiny_budget(tmp_path):
    from zflight import ablation

    path = ablation.run_ablation(
        [
            f"out={tmp_path / 'abl'}",
            "epochs=2",
            "data.train_size=256",
            "data.val_size=64",
            "data.batch_size=64",
            "data.cache_dir=null",
        ]
    )
    text = path.read_text()
    assert "conv2 gridding score: AlexNet-style" in text and "not measured" not in text
    for arm in ablation.ARMS:
        series = ablation.read_scalars(tmp_path / "abl" / arm)
        assert [e for e, _ in series["conv1/dead"]] == [0, 1]


def test_activation_statistics_stop_after_stats_images(tmp_path):
    model = tiny_zfnet()
    cb = FilterHealth(
        layers=["conv1"], gridding_layer=None, num_probes=2, stats_images=8, strict=True
    )
    data = loader(n=12)
    trainer(tmp_path, [cb]).validate(Classifier(model), data)
    first = data.dataset.tensors[0][: cb._counted["conv1"]]
    assert cb._counted["conv1"] >= 8 and len(first) < 12, "stopped after the batch that reached 8"
    direct = model.features.conv1(first) > 0
    assert int(cb._positive["conv1"].sum()) == int(direct.sum())
