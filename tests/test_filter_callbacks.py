"""FilterHealth and FilterRenorm: figures, scalars, alerts, streaming statistics, the RMS rule."""

from __future__ import annotations

import json
import math
import types
import warnings

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from zflight.analysis.filters import DEAD, OK, UNTRAINED, filter_health, filter_rms
from zflight.callbacks import filter_alerts as fa
from zflight.callbacks import filter_figures as ff
from zflight.callbacks.filter_figures import STATUS_COLOURS, filter_tiles
from zflight.callbacks.filter_health import FilterHealth
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
    kw.setdefault("enable_checkpointing", False)
    return pl.Trainer(
        default_root_dir=str(tmp_path),
        accelerator="cpu",
        logger=False,
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
    cb = FilterHealth(layers=["conv1", "conv2"])
    cb.capture_start(model)
    with torch.no_grad():
        unchanged = cb.analyze(model, probe(), fake_ctx()).scalars
    # the start network's projections are the current ones: the same gridding
    assert unchanged["conv2/gridding"] == pytest.approx(unchanged["conv2/gridding_start"])
    assert unchanged["conv2/gridding_rel"] == pytest.approx(1.0)
    with torch.no_grad():
        model.features.conv1.weight[2] *= 1e-4
        model.features.conv1.weight[5] = torch.randn(3, 7, 7)  # moved away from its start
        result = cb.analyze(model, probe(), fake_ctx())
    assert set(result.figures) == {
        "conv1/filters",
        "conv1/spectra",
        "conv2/filters",
        "conv2/spectra",
        "conv2/projections",
    }
    for fig in result.figures.values():
        assert fig.image.dtype == np.uint8 and fig.image.ndim == 3 and fig.image.shape[2] == 3
    for layer, step in (("conv1", 1.0), ("conv2", 4.0)):  # conv2's taps: conv1 /2, pool1 /2
        assert cb._step(model, layer) == step
        conv = model.layer(layer)
        expected = filter_health(
            conv.weight, conv.stride[0], step=step, initial=cb.initial[layer]
        ).scalars()
        assert {k: result.scalars[f"{layer}/{k}"] for k in expected} == pytest.approx(expected)
    assert result.scalars["conv1/dead"] == pytest.approx(1 / 12)
    assert result.scalars["conv1/untrained"] == pytest.approx(10 / 12)  # 12 minus dead, moved
    assert result.scalars["conv2/untrained"] == 1.0
    assert "1 dead" in result.figures["conv1/filters"].caption
    assert result.scalars["conv2/gridding_start"] == unchanged["conv2/gridding_start"]
    assert result.scalars["conv2/gridding"] != unchanged["conv2/gridding"]  # conv1 changed


def test_filter_tiles_are_contrast_normalised_each_and_framed_by_status():
    w = torch.randn(3, 3, 7, 7, generator=torch.Generator().manual_seed(2))
    w[1] *= 1e-3  # tiny but structured: still spans the full range on its own scale
    w[2] = 0.0
    status = torch.tensor([OK, UNTRAINED, DEAD])
    tiles = filter_tiles(w, status, tile=64)
    side = 7 * 10 + 2 * ff.FRAME  # ceil(64 / 7) = 10 times enlarged, framed
    assert [t.shape for t in tiles] == [(side, side, 3)] * 3
    for tile, s in zip(tiles, ("ok", "untrained", "dead")):
        assert (tile[: ff.FRAME] == STATUS_COLOURS[s]).all()
    for tile in tiles[:2]:
        inner = tile[ff.FRAME : -ff.FRAME, ff.FRAME : -ff.FRAME]
        assert inner.min() == 0 and inner.max() == 255
    assert (tiles[2][ff.FRAME : -ff.FRAME, ff.FRAME : -ff.FRAME] == 128).all()


def test_spectra_overlay_draws_the_nyquist_square_on_the_absolute_axis():
    mask = ff._overlay_mask(32, 2, stride=2, step=1.0)
    lo, hi = (16 - 8) * 2, (16 + 8 + 1) * 2 - 1  # bins |i - 16| <= 8 are inside 1/4 cycles/pixel
    assert (mask[lo, lo : hi + 1] == 1).all() and (mask[lo : hi + 1, hi] == 1).all()
    assert (mask == 1).sum() == 4 * (hi - lo)
    # a layer whose taps are 4 px apart spans +-1/8 cycles/px: its 1/16 ring lies 8 bins (16 px)
    # from DC, whose two pixels (bin 16 of 32) are 32 and 33; the 1/4 ring lies outside the tile
    rings = ff._overlay_mask(32, 2, stride=1, step=4.0) == 2  # dotted: two rows through DC
    cols = np.nonzero(rings[32:34].any(0))[0]
    assert np.abs(np.abs(cols - 32.5) - 16).max() <= 0.5 and len(cols) == 2
    img = ff.spectra_figure(torch.randn(4, 3, 7, 7), 2, 1.0, "conv1 spectra", ncols=4)
    assert img.dtype == np.uint8 and img.shape[1] > 4 * 64


def healthy_and_bad_layers(model: nn.Module) -> None:
    """conv1: every filter moved to a smooth trained Gabor (healthy); conv2 likewise."""
    g = torch.Generator().manual_seed(3)
    for name, k in (("conv1", 7), ("conv2", 5)):
        conv = model.layer(name)
        c = torch.arange(k, dtype=torch.float32) - (k - 1) / 2
        yy, xx = torch.meshgrid(c, c, indexing="ij")
        with torch.no_grad():
            for i in range(conv.weight.shape[0]):
                theta = float(torch.rand(1, generator=g)) * math.pi
                u = xx * math.cos(theta) + yy * math.sin(theta)
                gabor = torch.exp(-(xx**2 + yy**2) / k) * torch.cos(2 * math.pi * 0.12 * u)
                colour = torch.randn(conv.weight.shape[1], 1, 1, generator=g)
                conv.weight[i] = 0.1 * conv.weight[i] / conv.weight[i].norm() + colour * gabor


def test_alerts_stay_silent_on_a_healthy_layer_and_fire_after_warmup_on_a_bad_one(monkeypatch):
    sent: list[str] = []
    monkeypatch.setattr(fa, "wandb_alert", lambda title, text: sent.append(title))
    model = tiny_zfnet()
    cb = FilterHealth(layers=["conv1", "conv2"], warmup_epochs=2)
    cb.capture_start(model)
    healthy_and_bad_layers(model)

    def run(epoch: int, rank: int = 0) -> tuple[list[str], dict[str, float]]:
        with warnings.catch_warnings(record=True) as caught, torch.no_grad():
            warnings.simplefilter("always")
            result = cb.analyze(model, probe(), fake_ctx(epoch, rank))
        return [str(w.message) for w in caught], result.scalars

    for epoch in (0, 2, 3):
        messages, scalars = run(epoch)
        assert messages == [], scalars
    assert scalars["conv1/untrained"] == 0.0 and scalars["conv1/dead"] == 0.0
    with torch.no_grad():
        model.features.conv1.weight[:8] = 0.0  # 8 of 12 filters collapse: dead
    assert run(1)[0] == []  # warm-up: silent whatever the values
    messages, scalars = run(4)
    assert scalars["conv1/dead"] == pytest.approx(8 / 12)
    dead = [m for m in messages if "conv1/dead" in m]
    assert len(dead) == 1 and "filters/conv1/dead = 0.667 exceeds 0.25 at epoch 4" in dead[0]
    assert "learning rate" in dead[0]  # says what to try
    assert "filter health: conv1/dead" in sent and len(sent) == len(messages)
    assert run(5)[0] == []  # still above: no repeat
    restored = FilterHealth(layers=["conv1", "conv2"], warmup_epochs=2)
    restored.load_state_dict(cb.state_dict())
    assert restored.above["conv1/dead"] is True
    merged = FilterHealth(alert_thresholds={"conv2/dead": 0.3, "conv1/dead": math.inf})
    assert merged.alert_thresholds["conv2/dead"] == 0.3 and merged.alert_thresholds["dead"] == 0.5
    assert merged.alert_thresholds["conv1/dead"] == math.inf
    with pytest.raises(ValueError, match="unknown alert metric"):
        FilterHealth(alert_thresholds={"mid_band": 0.5})


def test_initial_weights_round_trip_through_the_state_dict():
    model = tiny_zfnet()
    cb = FilterHealth(layers=["conv1", "conv2"])
    cb.capture_start(model, epoch=0)
    start = {k: v.clone() for k, v in cb.initial.items()}
    restored = FilterHealth(layers=["conv1", "conv2"])
    restored.load_state_dict(cb.state_dict())
    with torch.no_grad():
        model.features.conv1.weight.add_(1.0)
    restored.capture_start(model, epoch=3)  # a resumed fit start: the kept start wins
    assert set(restored.initial) == {"conv1", "conv2"} and restored.start_epoch == 0
    for name in start:
        assert torch.equal(restored.initial[name], start[name])
    assert set(restored.initial_trunk) == set(cb.initial_trunk)
    assert torch.equal(restored.initial_trunk["conv1.weight"], start["conv1"])


def test_resume_keeps_the_start_of_the_first_fit(tmp_path):
    model = tiny_zfnet().train()
    start = model.features.conv1.weight.detach().clone()
    cb = FilterHealth(layers=["conv1"], gridding_layer=None, num_probes=2, strict=True)
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True)
    first = trainer(tmp_path, [cb, ckpt], max_epochs=1, enable_checkpointing=True)
    first.fit(Classifier(model, lr=0.05), loader(), loader(n=8))
    assert torch.equal(cb.initial["conv1"], start)
    assert not torch.equal(model.features.conv1.weight, start)  # training moved it
    fresh = FilterHealth(layers=["conv1"], gridding_layer=None, num_probes=2, strict=True)
    second = trainer(tmp_path, [fresh], max_epochs=2, enable_checkpointing=True)
    second.fit(
        Classifier(tiny_zfnet(seed=5), lr=0.05),
        loader(),
        loader(n=8),
        ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"),
    )
    assert torch.equal(fresh.initial["conv1"], start) and fresh.start_epoch == 0


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
        fa.wandb_alert("t", "x")
        assert run.sent == expected
    monkeypatch.setattr(wandb, "run", FakeRun(False, fail=True))
    with pytest.warns(UserWarning, match="could not send a W&B alert"):
        fa.wandb_alert("t", "x")
    monkeypatch.setattr(wandb, "run", None)
    fa.wandb_alert("t", "x")  # no run at all: nothing to do


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


def test_conv2_tiles_show_each_filter_in_input_pixels_and_say_how():
    from zflight.analysis.filter_views import linear_view
    from zflight.callbacks.filter_figures import shown_filters

    model = tiny_zfnet()
    w2 = model.features.conv2.weight
    shown, note = shown_filters(model.features, "conv2", w2)
    assert shown.shape == (w2.shape[0], 3, 27, 27)  # ZFNet's conv2 receptive field
    assert torch.equal(shown, linear_view(model.features, "conv2"))
    assert f"its {w2.shape[1]} input channels reduced" in note
    w1 = model.features.conv1.weight
    assert shown_filters(model.features, "conv1", w1) == (w1, None)
    assert shown_filters(None, "conv2", w2) == (w2, None)  # no trunk: the strongest channel


def test_the_callback_defaults_are_the_analysis_defaults():
    import inspect

    defaults = inspect.signature(filter_health).parameters
    for name, value in FilterHealth().options.items():
        assert value == defaults[name].default, name


def test_spectra_colour_bar_fits_the_data():
    # constructed spectra: every value 1 (0 dB) except 10% of them at -12 dB: the bar is 15 dB deep
    norm = torch.ones(4, 32, 32, dtype=torch.float64)
    norm.view(-1)[: norm.numel() // 10] = 10 ** (-1.2)
    assert ff.fitted_range_db(norm) == 15.0
    # a single deep notch (under 1% of the values) does not stretch it; flat data get 10 dB
    norm.view(-1)[0] = 1e-9
    assert ff.fitted_range_db(norm) == 15.0
    assert ff.fitted_range_db(torch.ones(2, 8, 8)) == 10.0
    deep = torch.full((2, 8, 8), 1e-12)
    assert ff.fitted_range_db(deep) == 60.0  # at most 60 dB
