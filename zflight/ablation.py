"""``python -m zflight.ablation [key=value ...]``: the paper's Fig. 6 ablation in one command.

Trains the AlexNet-style baseline (conv1 11x11/4) and ZFNet (conv1 7x7/2, conv filters' RMS
clipped to 0.1) on the same data, seed and budget with the ``FilterHealth`` callback every epoch,
then writes ``<out>/report.md`` with ``filters.png`` (final conv1 filters and spectra side by side),
``curves.png`` (health scalars and accuracy per epoch) and ``report.png`` (both).

Keys: ``out`` (default ``runs/ablation``), ``epochs`` (6), ``seed`` (0), ``renorm`` (``zfnet``:
the paper's fix on ZFNet only; ``none`` or ``both``), ``overwrite`` (false). Any other
``key=value`` (``data.train_size=8000``, ``logger=wandb``) goes to both training runs.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from zflight.analysis.filters import frequency_grid
from zflight.analysis.images import caption, hstack
from zflight.config import ConfigError
from zflight.models.zfnet import ALEXNET_LAYERS, ZFNET_LAYERS
from zflight.train import train

ARMS = {"alexnet_style": "AlexNet-style (conv1 11x11/4)", "zfnet": "ZFNet (conv1 7x7/2)"}
GEOMETRY = {"alexnet_style": ALEXNET_LAYERS, "zfnet": ZFNET_LAYERS}
RENORM = ("none", "zfnet", "both")
# (key, label, which arm the paper expects lower: "zfnet" means ZFNet should score lower)
FINDINGS = [
    ("conv1/dead", "conv1 dead fraction", "zfnet"),
    ("conv1/aliased", "conv1 aliased fraction", "zfnet"),
    ("conv1/mid_band", "conv1 mid-band share", "alexnet_style"),
    ("conv2/gridding", "conv2 gridding score", "zfnet"),
]
TABLE = (
    "conv1/dead conv1/never_active conv1/aliased conv1/aliasing_mean conv1/duplicate "
    "conv1/mid_band conv1/mid_band_energy conv1/effective_rank conv1/at_radius conv2/aliased "
    "conv2/gridding"
).split()
CURVES = (
    "conv1/dead conv1/aliased conv1/aliasing_mean conv1/mid_band conv1/effective_rank "
    "conv2/gridding"
).split()


REPORT = """# Filter-health ablation: AlexNet-style vs ZFNet (Zeiler & Fergus, Fig. 6)

Command: `{command}`

Same data, seed ({seed}) and budget ({epochs} epochs); filter RMS clipped to 0.1 in {renorm}.
Extra overrides: {extra}.

## The paper's findings, at the last epoch

{verdicts}

## Values

{table}

Fractions are over all filters of the layer; `mid_band` is the share of live filters whose dominant
frequency lies in the alias-free band [1/k, 1/(2s)]; `gridding` is the share of conv2's deconvnet
projections' energy at conv1's stride harmonics. For reference, white noise (a random
initialisation) scores `aliasing_mean` and `mid_band_energy` {noise}: filters still near those
values have not left their initialisation.

## Figures

![final conv1 filters and spectra](filters.png)

![health scalars and accuracy per epoch](curves.png)

Runs: {runs}
"""


@dataclass
class AblationConfig:
    out: str = "runs/ablation"
    epochs: int = 6
    seed: int = 0
    renorm: str = "zfnet"
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
    return cfg, passthrough


def arm_overrides(model: str, cfg: AblationConfig, run_dir: Path, extra: list[str]) -> list[str]:
    """Training overrides of one arm: everything shared except the model and the renorm rule.

    Only ``FilterHealth`` (and ``FilterRenorm``) run, every epoch, whatever the default callback set.
    """
    overrides = [
        f"model.name={model}",
        f"seed={cfg.seed}",
        f"trainer.max_epochs={cfg.epochs}",
        f"run_dir={run_dir}",
        f"name=ablation-{model}",
        "logger=csv",
        "trainer.progress=false",
        "callbacks=none",
        "callbacks.filters._target_=zflight.callbacks.filter_health.FilterHealth",
        "callbacks.filters.layers=[conv1,conv2]",
        "callbacks.filters.every_n_epochs=1",
        f"callbacks.filters.warmup_epochs={max(1, cfg.epochs // 2)}",
    ]
    if cfg.renorm == "both" or cfg.renorm == model:
        overrides.append("callbacks.renorm._target_=zflight.callbacks.renorm.FilterRenorm")
    return overrides + extra


def read_scalars(run_dir: Path, prefix: str = "filters/") -> dict[str, list[tuple[int, float]]]:
    """``<run_dir>/viz/scalars.jsonl`` as key -> [(epoch, value)], the callback's prefix removed."""
    series: dict[str, list[tuple[int, float]]] = {}
    path = run_dir / "viz" / "scalars.jsonl"
    for line in path.read_text().splitlines() if path.exists() else []:
        r = json.loads(line)
        if r["key"].startswith(prefix):
            series.setdefault(r["key"][len(prefix) :], []).append(
                (int(r["epoch"]), float(r["value"]))
            )
    return series


def read_accuracy(run_dir: Path) -> list[tuple[int, float]]:
    """Validation top-1 per epoch from the CSV logger's ``metrics.csv`` (empty without one)."""
    points: dict[int, float] = {}
    for path in run_dir.rglob("metrics.csv"):
        with open(path) as f:
            for row in csv.DictReader(f):
                if row.get("val/acc1"):
                    points[int(row["epoch"])] = float(row["val/acc1"])
    return sorted(points.items())


def last_png(run_dir: Path, key: str) -> np.ndarray | None:
    """The last epoch's picture of ``filters/<key>`` written by the callback."""
    pngs = sorted((run_dir / "viz" / "filters" / key).glob("epoch_*.png"))
    return np.asarray(Image.open(pngs[-1]).convert("RGB")) if pngs else None


def curves_figure(
    series: dict[str, dict[str, list[tuple[int, float]]]],
    accuracy: dict[str, list[tuple[int, float]]],
) -> np.ndarray:
    """One small chart per scalar (both arms on each) plus validation accuracy, as uint8 HxWx3."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    keys = [*CURVES, "val/acc1"]
    fig = MplFigure(figsize=(3.2 * 4, 2.6 * 2), dpi=90)
    FigureCanvasAgg(fig)
    for i, key in enumerate(keys):
        ax = fig.add_subplot(2, 4, i + 1)
        for arm, label in ARMS.items():
            pts = accuracy.get(arm, []) if key == "val/acc1" else series.get(arm, {}).get(key, [])
            if pts:
                ax.plot([e + 1 for e, _ in pts], [v for _, v in pts], marker="o", ms=3, label=label)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.axes[0].legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return np.asarray(Image.open(buf).convert("RGB"))


def filters_figure(run_dirs: dict[str, Path]) -> np.ndarray:
    """Final conv1 filter grids and spectra of both arms, side by side."""
    columns = []
    for arm, run_dir in run_dirs.items():
        panels = [
            p
            for p in (last_png(run_dir, "conv1/filters"), last_png(run_dir, "conv1/spectra"))
            if p is not None
        ]
        if panels:
            columns.append(caption(stack_rows(panels, pad=6), ARMS[arm], height=14))
    return hstack(columns, pad=12) if columns else np.full((8, 8, 3), 255, np.uint8)


def stack_rows(panels: list[np.ndarray], pad: int = 12) -> np.ndarray:
    """Panels one above the other at their own heights (``vstack`` gives every row the tallest's)."""
    width = max(p.shape[1] for p in panels)
    rows = [
        np.pad(p, ((0, pad), (0, width - p.shape[1]), (0, 0)), constant_values=255) for p in panels
    ]
    return np.concatenate(rows)


def endpoint_values(
    series: dict[str, list[tuple[int, float]]], last: bool = True
) -> dict[str, float]:
    """Each scalar at the last (or first) epoch it was logged."""
    pick = max if last else min
    return {k: pick(pts)[1] for k, pts in series.items() if pts}


def noise_reference(kernel: int, stride: int, n_fft: int = 64) -> tuple[float, float]:
    """Expected (aliasing score, mid-band energy) of a white-noise filter: the shares of FFT bins
    outside the Nyquist square and inside the mid band, since its expected spectrum is flat."""
    fy, fx = frequency_grid(n_fft)
    inf_norm, radial = torch.maximum(fy.abs(), fx.abs()), torch.sqrt(fy**2 + fx**2)
    outside = float((inf_norm > 1 / (2 * stride)).float().mean())
    mid = float(((radial >= 1 / kernel) & (inf_norm <= 1 / (2 * stride))).float().mean())
    return outside, mid


def verdicts(finals: dict[str, dict[str, float]]) -> list[str]:
    """One line per finding of the paper: the two values and whether the direction matches."""
    lines = []
    for key, label, lower in FINDINGS:
        a, z = finals["alexnet_style"].get(key), finals["zfnet"].get(key)
        if a is None or z is None:
            lines.append(f"- {label}: not measured")
            continue
        if abs(a - z) < 1e-9:
            outcome = "no difference"
        else:
            zf_lower = z < a
            outcome = (
                "as in the paper" if zf_lower == (lower == "zfnet") else "opposite to the paper"
            )
        lines.append(f"- {label}: AlexNet-style {a:.3f}, ZFNet {z:.3f} ({outcome})")
    return lines


def write_report(
    out: Path,
    cfg: AblationConfig,
    extra: list[str],
    results: dict[str, dict[str, Any]],
    seconds: dict[str, float],
    argv: list[str] | None = None,
) -> Path:
    """``report.md`` and its PNGs under ``out``."""
    run_dirs = {arm: Path(r["run_dir"]) for arm, r in results.items()}
    series = {arm: read_scalars(d) for arm, d in run_dirs.items()}
    accuracy = {arm: read_accuracy(d) for arm, d in run_dirs.items()}
    finals = {arm: endpoint_values(s) for arm, s in series.items()}
    firsts = {arm: endpoint_values(s, last=False) for arm, s in series.items()}
    filters_png, curves_png = filters_figure(run_dirs), curves_figure(series, accuracy)
    Image.fromarray(filters_png).save(out / "filters.png")
    Image.fromarray(curves_png).save(out / "curves.png")
    Image.fromarray(stack_rows([filters_png, curves_png])).save(out / "report.png")
    head = "| metric (first -> last epoch) | " + " | ".join(ARMS.values()) + " |"
    rows = [head, "|---" * (len(ARMS) + 1) + "|"]
    for key in ["val_acc1", "val_acc5"]:
        rows.append(f"| {key} | " + " | ".join(f"{results[a][key]:.4f}" for a in ARMS) + " |")
    for key in TABLE:
        cells = [
            f"{firsts[a][key]:.3f} -> {finals[a][key]:.3f}" if key in finals[a] else "-"
            for a in ARMS
        ]
        rows.append(f"| {key} | " + " | ".join(cells) + " |")
    rows.append("| train time (s) | " + " | ".join(f"{seconds[a]:.0f}" for a in ARMS) + " |")
    noise = []
    for arm, layers in GEOMETRY.items():
        k, st = layers.conv1_kernel, layers.conv1_stride
        alias, mid = noise_reference(k, st)
        noise.append(f"{k}x{k}/{st} ({ARMS[arm].split(' ')[0]}) {alias:.3f} and {mid:.3f}")
    renorm = {"none": "neither arm", "zfnet": "ZFNet only", "both": "both arms"}[cfg.renorm]
    text = REPORT.format(
        command=" ".join(["python -m zflight.ablation", *(argv or [])]),
        seed=cfg.seed,
        epochs=cfg.epochs,
        renorm=renorm,
        extra=" ".join(extra) or "none",
        verdicts="\n".join(verdicts(finals)),
        table="\n".join(rows),
        noise="; ".join(noise),
        runs=", ".join(f"`{d}`" for d in run_dirs.values()),
    )
    path = out / "report.md"
    path.write_text(text)
    return path


def run_ablation(argv: list[str] | None = None) -> Path:
    """Train both arms, write the report, return the path of ``report.md``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg, extra = parse_args(argv)
    out = Path(cfg.out)
    if out.exists() and any(out.iterdir()):
        if not cfg.overwrite:
            raise FileExistsError(
                f"{out} is not empty; choose another out=... or pass overwrite=true"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    results, seconds = {}, {}
    for arm in ARMS:
        start = time.perf_counter()
        results[arm] = train(arm_overrides(arm, cfg, out / arm, extra))
        seconds[arm] = time.perf_counter() - start
    path = write_report(out, cfg, extra, results, seconds, argv)
    print(f"ablation report: {path}\nfigures:         {out / 'report.png'}", flush=True)
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
