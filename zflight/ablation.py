"""``python -m zflight.ablation [key=value ...]``: the paper's Fig. 6 ablation in one command.

Trains the AlexNet-style baseline (conv1 11x11/4) and ZFNet (conv1 7x7/2) on the same data with
the paper's optimiser (SGD, momentum 0.9) and the same filter RMS rule (0.1) on both arms, for
several seeds, with ``FilterHealth`` every epoch; then writes ``<out>/report.md`` (per-seed values,
mean +- spread, and for each of the paper's claims "holds on k of n seeds" or "not testable here"),
``filters.png`` (final conv1 filters and spectra of the first seed) and ``curves.png``.

Keys: ``out`` (``runs/ablation``), ``seeds`` (3: seeds 0..n-1), ``epochs`` (10), ``train_size``
(16000), ``fine_texture`` (true: gratings up to 0.4 cycles/px in the shapes data, see
``zflight.data.shapes``), ``lr`` (0.05), ``renorm`` (``both``; ``none`` or ``zfnet``),
``overwrite`` (false). Any other ``key=value`` (``data.val_size=1000``) goes to every run.
The defaults take about 9 minutes on a quiet 2-core CPU (README, "Filter-health ablation").
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from zflight.ablation_report import ARMS, write_report
from zflight.config import ConfigError

RENORM = ("none", "zfnet", "both")


@dataclass
class AblationConfig:
    out: str = "runs/ablation"
    seeds: int = 5
    epochs: int = 10
    train_size: int = 16000
    fine_texture: bool = True
    lr: float = 0.05
    conv1_std: float = 0.07
    probes: int = 64
    renorm: str = "both"
    overwrite: bool = False


def parse_args(argv: list[str]) -> tuple[AblationConfig, list[str]]:
    """Split ``key=value`` arguments into the ablation's own keys and overrides for training."""
    cfg, passthrough = AblationConfig(), []
    own = {f.name for f in fields(AblationConfig)}
    for item in argv:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"argument {item!r} is not key=value")
        if key in own:
            current = getattr(cfg, key)
            try:
                is_bool = isinstance(current, bool)
                parsed = value.lower() in ("1", "true", "yes") if is_bool else type(current)(value)
            except ValueError:
                raise ConfigError(f"{key}={value!r}: expected {type(current).__name__}") from None
            setattr(cfg, key, parsed)
        else:
            passthrough.append(item)
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
    """Train both arms for every seed, write the report, return the path of ``report.md``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg, extra = parse_args(argv)
    from zflight.train import train

    out = Path(cfg.out)
    if out.exists() and any(out.iterdir()):
        if not cfg.overwrite:
            raise FileExistsError(
                f"{out} is not empty; choose another out=... or pass overwrite=true"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    results: dict[int, dict[str, dict[str, Any]]] = {}
    for seed in range(cfg.seeds):
        results[seed] = {}
        for arm in ARMS:
            t0 = time.perf_counter()
            run = train(arm_overrides(arm, seed, cfg, out / f"seed{seed}" / arm, extra))
            results[seed][arm] = {**run, "seconds": time.perf_counter() - t0}
    path = write_report(out, cfg, extra, results, time.perf_counter() - start, argv)
    print(f"ablation report: {path}", flush=True)
    return path


def main(argv: list[str] | None = None) -> int:
    try:
        run_ablation(argv)
    except (ConfigError, FileExistsError) as exc:
        print(f"ablation: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
