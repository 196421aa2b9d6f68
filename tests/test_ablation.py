"""The ablation entry point: arguments, training overrides, claim counting and the report."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from zflight.callbacks.filter_health import FilterHealth
from zflight.callbacks.renorm import FilterRenorm


def test_ablation_arguments_and_overrides_are_valid_configs(tmp_path):
    from zflight import ablation
    from zflight.config import ConfigError, load_config
    from zflight.run.build import build_callbacks

    cfg, extra = ablation.parse_args(["epochs=3", "seeds=2", "renorm=zfnet", "logger=none"])
    assert (cfg.epochs, cfg.seeds, cfg.renorm, extra) == (3, 2, "zfnet", ["logger=none"])
    for bad in (["renorm=sometimes"], ["epochs"], ["epochs=many"], ["seeds=0"]):
        with pytest.raises(ConfigError):
            ablation.parse_args(bad)
    for arm, has_renorm in (("alexnet_style", False), ("zfnet", True)):
        train_cfg = load_config(ablation.arm_overrides(arm, 1, cfg, tmp_path / arm, extra))
        got = (train_cfg.model.name, train_cfg.seed, train_cfg.trainer.max_epochs)
        assert got == (arm, 1, 3)
        assert (train_cfg.optim.name, train_cfg.optim.momentum) == ("sgd", 0.9)
        assert train_cfg.data.fine_texture is True and train_cfg.data.train_size == 16000
        assert train_cfg.logger.name == "none"  # the user's override comes last and wins
        kinds = [type(c) for c in build_callbacks(train_cfg)]
        assert kinds == ([FilterHealth, FilterRenorm] if has_renorm else [FilterHealth])
    both, _ = ablation.parse_args([])
    for arm in ("alexnet_style", "zfnet"):  # the default: the same RMS rule on both arms
        kinds = [
            type(c)
            for c in build_callbacks(
                load_config(ablation.arm_overrides(arm, 0, both, tmp_path, []))
            )
        ]
        assert kinds == [FilterHealth, FilterRenorm]


def test_claim_outcomes_count_seeds_and_say_when_untestable():
    from zflight.ablation.report import claim_outcome

    # (AlexNet-style, ZFNet) per seed
    assert claim_outcome([(0.1, 0.3), (0.2, 0.1), (0.1, 0.4)], "zfnet") == (2, 3, None)
    assert claim_outcome([(0.3, 0.1), (0.2, 0.2)], "alexnet_style") == (1, 2, None)  # a tie fails
    holds, n, reason = claim_outcome([(0.0, 0.0), (0.0, 0.0)], "alexnet_style")
    assert (holds, n) == (0, 2) and "no such filter in either arm" in reason
    assert claim_outcome([(math.nan, 0.2)], "zfnet")[2].startswith("not measured")
    holds, n, reason = claim_outcome([(1.0, 1.0), (1.0, 1.0)], "alexnet_style")  # saturated
    assert (holds, n, reason) == (0, 2, "both arms at the same value on every seed (1)")


def gabor_bank(count: int, k: int, freq: float, seed: int) -> torch.Tensor:
    """``count`` RGB Gabors of one carrier frequency (cycles/px) at random orientations."""
    g = torch.Generator().manual_seed(seed)
    c = torch.arange(k, dtype=torch.float64) - (k - 1) / 2
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    out = []
    for _ in range(count):
        theta = float(torch.rand(1, generator=g)) * math.pi
        u = xx * math.cos(theta) + yy * math.sin(theta)
        f = torch.exp(-(xx**2 + yy**2) / (2 * (k / 4) ** 2)) * torch.cos(2 * math.pi * freq * u)
        colour = torch.rand(3, 1, 1, generator=g, dtype=torch.float64) - 0.5
        out.append(0.05 * f * colour / colour.abs().max())
    return torch.stack(out).float() if out else torch.zeros(0, 3, k, k)


def fake_run(root: Path, arm: str, seed: int, kept: int, aliased: int, acc: float) -> None:
    """A finished ablation run whose checkpoint holds constructed conv1 filters: ``kept`` still
    at their start, ``aliased`` Gabors at 0.3 cycles/px, the rest smooth Gabors (0.12 cycles/px
    in ZFNet, 0.03 in AlexNet-style)."""
    from zflight import ablation
    from zflight.config import load_config, to_yaml
    from zflight.run.build import build_model
    from zflight.run.checkpoints import CONFIG_KEY

    run_dir = root / f"seed{seed}" / arm
    cfg, _ = ablation.parse_args(["epochs=2"])
    extra = ["data.val_size=64", "data.cache_dir=null", "logger=csv"]
    train_cfg = load_config(ablation.arm_overrides(arm, seed, cfg, run_dir, extra))
    torch.manual_seed(seed)
    model = build_model(train_cfg, 8)
    trunk = model.features[: list(model.features._modules).index("conv2") + 1]
    start = {n: model.layer(n).weight.detach().clone() for n in ("conv1", "conv2")}
    start_trunk = {k: v.clone() for k, v in trunk.state_dict().items()}
    conv1 = model.features.conv1.weight
    k, n = conv1.shape[-1], conv1.shape[0]
    smooth = 0.12 if arm == "zfnet" else 0.03
    with torch.no_grad():
        conv1[kept : kept + aliased] = gabor_bank(aliased, k, 0.3, seed)
        conv1[kept + aliased :] = gabor_bank(n - kept - aliased, k, smooth, seed + 10)
        model.features.conv2.weight.add_(0.3 * torch.randn_like(model.features.conv2.weight))
    (run_dir / "checkpoints").mkdir(parents=True)
    torch.save(
        {
            "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
            CONFIG_KEY: OmegaConf.to_container(train_cfg, resolve=True),
            "callbacks": {
                "FilterHealth[filters]": {"initial": start, "initial_trunk": start_trunk}
            },
        },
        run_dir / "checkpoints" / "last.ckpt",
    )
    (run_dir / "config.yaml").write_text(to_yaml(train_cfg))
    (run_dir / "csv").mkdir()
    (run_dir / "csv" / "metrics.csv").write_text(f"epoch,step,val/acc1\n0,9,0.5\n1,19,{acc}\n")


def test_report_re_measures_checkpoints_and_gives_paired_statistics(tmp_path):
    from zflight import ablation
    from zflight.ablation.report import read_accuracy

    out = tmp_path / "abl"
    # seed: (AlexNet-style kept, aliased, top-1), (ZFNet kept, aliased, top-1)
    plan = {0: ((6, 2, 0.80), (1, 0, 0.90)), 1: ((7, 3, 0.85), (1, 0, 0.84))}
    for seed, arms in plan.items():
        for arm, (kept, aliased, acc) in zip(("alexnet_style", "zfnet"), arms):
            fake_run(out, arm, seed, kept, aliased, acc)
    assert read_accuracy(out / "seed0" / "zfnet") == [(0, 0.5), (1, 0.9)]
    text = ablation.run_ablation([f"out={out}", "report_only=true"]).read_text()
    rows = {line.split(" | ")[0][2:]: line for line in text.splitlines() if line.startswith("| (")}
    # (b): 6/24 and 7/24 untrained against 1/24: -5/24 and -6/24, mean -0.229, sd 0.0295, t(1)
    b = rows["(b) fewer dead conv1 filters (dead or untrained)"]
    assert "**2 of 2**" in b and "-0.229 [" in b and "| 0.058 |" in b
    assert "| 0.042 ± 0.000 | 0.271 ± 0.029 |" in b
    # (c): 2/24 and 3/24 aliased against none
    c = rows["(c) fewer aliased conv1 filters"]
    assert "**2 of 2**" in c and "-0.104 [" in c
    # (a): ZFNet's smooth filters peak at 0.12 cycles/px (mid band), AlexNet-style's at DC
    a = rows["(a) more mid-frequency conv1 filters (share peaking at 1/16-1/4 cycles/px)"]
    assert "**2 of 2**" in a
    assert "**1 of 2**" in rows["(e) better accuracy"] and "+0.045 [" in rows["(e) better accuracy"]
    assert "a paired t-test needs about" in text
    assert "schedule onecycle" in text and "N(0, 0.07^2) in both arms" in text
    for png in ("fig6.png", "curves.png"):
        assert Image.open(out / png).size[0] > 100


@pytest.mark.slow
def test_ablation_end_to_end_on_a_tiny_budget(tmp_path):
    from zflight import ablation
    from zflight.ablation.figures import read_scalars

    path = ablation.run_ablation(
        [
            f"out={tmp_path / 'abl'}",
            "seeds=1",
            "epochs=2",
            "train_size=256",
            "data.val_size=64",
            "data.batch_size=64",
            "data.cache_dir=null",
        ]
    )
    text = path.read_text()
    assert "| (e) better accuracy | **" in text and "| 0 | ZFNet |" in text
    for arm in ablation.ARMS:
        series = read_scalars(tmp_path / "abl" / "seed0" / arm)
        assert [e for e, _ in series["conv1/untrained"]] == [1]  # every other epoch
        assert "conv2/gridding_rel" in series
