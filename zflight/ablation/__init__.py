"""``python -m zflight.ablation [key=value ...]``: the paper's Fig. 6 ablation in one command.

Trains the AlexNet-style baseline (conv1 11x11/4) and ZFNet (conv1 7x7/2) on the same data with
the paper's optimiser (SGD, momentum 0.9), the same conv1 start (N(0, 0.07^2): below the 0.1 RMS
radius in both arms) and the same filter RMS rule (0.1), for several seeds, with ``FilterHealth``
every other epoch; then re-measures every run's last checkpoint and writes ``<out>/report.md``
(each claim's "holds on k of n seeds" beside its paired mean difference, 95% interval and
p-value), ``fig6.png`` (both arms' final conv1 filters, framed by status) and ``curves.png``.

Keys: ``out`` (``runs/ablation``), ``seeds`` (5: seeds 0..n-1), ``epochs`` (10), ``train_size``
(16000), ``fine_texture`` (true: gratings up to 0.4 cycles/px in the shapes data, see
``zflight.data.shapes``), ``texture_labels`` (false: true ties the grating's orientation to the
class), ``lr`` (0.05), ``conv1_std`` (0.07), ``probes`` (64 validation images for gridding),
``renorm`` (``both``; ``none`` or ``zfnet``), ``overwrite`` (false), ``report_only`` (false: true
re-measures the runs already in ``out`` and rewrites the report, no training). Any other
``key=value`` (``data.val_size=1000``) goes to every run.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zflight.ablation.figures import ARMS
from zflight.ablation.measure import measure_checkpoint
from zflight.ablation.report import read_accuracy, write_report
from zflight.config import ConfigError
from zflight.run.commands import split_own_keys

RENORM = ("none", "zfnet", "both")


@dataclass
class AblationConfig:
    out: str = "runs/ablation"
    seeds: int = 5
    first_seed: int = 0
    epochs: int = 10
    train_size: int = 16000
    fine_texture: bool = True
    texture_labels: bool = False
    lr: float = 0.05
    conv1_std: float = 0.07
    probes: int = 64
    renorm: str = "both"
    overwrite: bool = False
    report_only: bool = False


def parse_args(argv: list[str]) -> tuple[AblationConfig, list[str]]:
    """Split ``key=value`` arguments into the ablation's own keys and overrides for training."""
    cfg = AblationConfig()
    passthrough = split_own_keys(cfg, argv)
    if cfg.renorm not in RENORM:
        raise ConfigError(f"renorm={cfg.renorm!r} is not valid; choices: {', '.join(RENORM)}")
    if cfg.seeds < 1 or cfg.epochs < 1:
        raise ConfigError(f"seeds and epochs must be >= 1, got {cfg.seeds} and {cfg.epochs}")
    return cfg, passthrough


def arm_overrides(
    model: str, seed: int, cfg: AblationConfig, run_dir: Path, extra: list[str]
) -> list[str]:
    """Training overrides of one arm and seed: everything shared except the model (and the RMS
    rule when ``renorm`` is not ``both``). Only ``FilterHealth`` (and ``FilterRenorm``) run."""
    overrides = [
        f"model.name={model}",
        f"seed={seed}",
        f"trainer.max_epochs={cfg.epochs}",
        f"data.train_size={cfg.train_size}",
        f"data.fine_texture={str(cfg.fine_texture).lower()}",
        f"data.texture_labels={str(cfg.texture_labels).lower()}",
        "optim.name=sgd",
        "optim.momentum=0.9",
        f"optim.lr={cfg.lr}",
        "optim.schedule=onecycle",
        f"model.conv1_std={cfg.conv1_std}",
        f"run_dir={run_dir}",
        f"name=ablation-{model}-seed{seed}",
        "logger=csv",
        "trainer.progress=false",
        "callbacks=none",
        "callbacks.filters._target_=zflight.callbacks.filter_health.FilterHealth",
        "callbacks.filters.layers=[conv1,conv2]",
        "callbacks.filters.every_n_epochs=2",
        f"callbacks.filters.num_probes={cfg.probes}",
        f"callbacks.filters.warmup_epochs={cfg.epochs}",  # the report compares; no alerts
    ]
    if cfg.renorm == "both" or cfg.renorm == model:
        overrides.append("callbacks.renorm._target_=zflight.callbacks.renorm.FilterRenorm")
    return overrides + extra


def run_ablation(argv: list[str] | None = None) -> Path:
    """Train both arms for every seed (unless ``report_only``), re-measure, write the report."""
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg, extra = parse_args(argv)
    out = Path(cfg.out)
    if cfg.report_only:
        results, seconds = found_runs(out)
    else:
        results, seconds = train_all(cfg, extra, out)
    measured = {
        s: {
            arm: {
                **measure_checkpoint(Path(r["run_dir"]) / "checkpoints" / "last.ckpt", cfg.probes),
                "top1": r["val_acc1"],
            }
            for arm, r in runs.items()
        }
        for s, runs in results.items()
    }
    command = " ".join(["python -m zflight.ablation", *argv])
    path = write_report(out, results, measured, seconds, command)
    print(f"ablation report: {path}", flush=True)
    return path


def train_all(
    cfg: AblationConfig, extra: list[str], out: Path
) -> tuple[dict[int, dict[str, dict[str, Any]]], float]:
    """Train every seed and arm into ``out``; ``runs.json`` keeps their times for a re-report."""
    from zflight.train import train

    if out.exists() and any(out.iterdir()):
        if not cfg.overwrite:
            raise FileExistsError(
                f"{out} is not empty; choose another out=... or pass overwrite=true"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    results: dict[int, dict[str, dict[str, Any]]] = {}
    for seed in range(cfg.first_seed, cfg.first_seed + cfg.seeds):
        results[seed] = {}
        for arm in ARMS:
            t0 = time.perf_counter()
            run = train(arm_overrides(arm, seed, cfg, out / f"seed{seed}" / arm, extra))
            results[seed][arm] = {
                "run_dir": str(run["run_dir"]),
                "val_acc1": float(run["val_acc1"]),
                "seconds": time.perf_counter() - t0,
            }
    seconds = time.perf_counter() - start
    (out / "runs.json").write_text(json.dumps({"seconds": seconds, "runs": results}, indent=1))
    return results, seconds


def found_runs(out: Path) -> tuple[dict[int, dict[str, dict[str, Any]]], float]:
    """The runs under ``out`` (``seed<N>/<arm>`` with a ``last.ckpt``) and the wall time: from
    ``runs.json`` when there, else from the files' times (first config written to last
    checkpoint)."""
    kept = json.loads((out / "runs.json").read_text()) if (out / "runs.json").exists() else {}
    results: dict[int, dict[str, dict[str, Any]]] = {}
    times: list[float] = []
    for seed_dir in sorted(out.glob("seed*"), key=lambda p: int(p.name[4:])):
        seed = int(seed_dir.name[4:])
        runs = {arm: seed_dir / arm for arm in ARMS}
        if not all((r / "checkpoints" / "last.ckpt").exists() for r in runs.values()):
            continue
        results[seed] = {}
        for arm, run_dir in runs.items():
            begun = (run_dir / "config.yaml").stat().st_mtime
            ended = (run_dir / "checkpoints" / "last.ckpt").stat().st_mtime
            times += [begun, ended]
            acc = read_accuracy(run_dir)
            results[seed][arm] = {
                "run_dir": str(run_dir),
                "val_acc1": acc[-1][1] if acc else math.nan,
                "seconds": kept.get("runs", {})
                .get(str(seed), {})
                .get(arm, {})
                .get("seconds", ended - begun),
            }
    if not results:
        raise FileExistsError(f"no finished ablation runs under {out} (seed<N>/<arm>/checkpoints)")
    return results, float(kept.get("seconds", max(times) - min(times)))


def main(argv: list[str] | None = None) -> int:
    try:
        run_ablation(argv)
    except (ConfigError, FileExistsError) as exc:
        print(f"ablation: {exc}", file=sys.stderr)
        return 2
    return 0
