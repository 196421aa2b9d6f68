"""``python -m zflight.rehearse [key=value ...]``: the ImageNet job, rehearsed on a small folder.

Writes an ImageNet-layout folder of shapes JPEGs (``size`` px, object masks beside it, so scores
work), then runs ``experiment=imagenet`` on it with every analysis on, under ``devices`` CPU DDP
processes, and prints what each part cost: writing the data, the run, the training epochs and each
analysis (seconds, forward passes a rank, share of the training epoch: the cost ledger).

Keys: ``out`` (``runs/rehearsal``), ``classes`` (8), ``train_per_class`` (8), ``val_per_class``
(4), ``size`` (256), ``epochs`` (1), ``devices`` (2), ``width`` (0.25; 1.0 is the paper's net),
``batch_size`` (16), ``masks`` (true: object masks beside the folder, so localisation scores
run; false: none, as in ImageNet), ``overwrite`` (false). Any other ``key=value`` goes to the training run
(``callbacks.budget=0.02``, ``callbacks.actmax=null``). The defaults take a few minutes on 2 cores.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from zflight.config import ConfigError
from zflight.run.commands import split_own_keys


@dataclass
class RehearsalConfig:
    out: str = "runs/rehearsal"
    classes: int = 8
    train_per_class: int = 8
    val_per_class: int = 4
    size: int = 256
    epochs: int = 1
    devices: int = 2
    width: float = 0.25
    batch_size: int = 16
    masks: bool = True
    overwrite: bool = False


def parse_args(argv: list[str]) -> tuple[RehearsalConfig, list[str]]:
    """The rehearsal's own keys, and the rest for the training run."""
    cfg = RehearsalConfig()
    passthrough = split_own_keys(cfg, argv)
    for key in ("classes", "train_per_class", "val_per_class", "epochs", "devices", "batch_size"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key} must be >= 1, got {getattr(cfg, key)}")
    if not 224 <= cfg.size <= 512:
        raise ConfigError(f"size={cfg.size}: the ImageNet recipe crops 224 px; use 224 to 512")
    if not 2 <= cfg.classes <= 8:
        raise ConfigError(f"classes={cfg.classes}: the shapes generator has 2 to 8 classes")
    return cfg, passthrough


def train_overrides(cfg: RehearsalConfig, data: Path, run: Path, extra: list[str]) -> list[str]:
    """``experiment=imagenet`` on the written folder, CPU DDP, every analysis of the default set."""
    return [
        "experiment=imagenet",
        f"data.root={data}",
        f"data.batch_size={cfg.batch_size}",
        "data.num_workers=0",
        f"model.width={cfg.width}",
        "trainer.accelerator=cpu",
        f"trainer.devices={cfg.devices}",
        f"trainer.max_epochs={cfg.epochs}",
        "trainer.progress=false",
        "logger=csv",
        f"run_dir={run}",
        *extra,
    ]


def cost_table(scalars: Path) -> list[str]:
    """The ledger of every analysed epoch from ``scalars.jsonl``: one line per callback."""
    epochs: dict[int, dict[str, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    if scalars.exists():
        for line in scalars.read_text().splitlines():
            row = json.loads(line)
            parts = row["key"].split("/")
            if parts[0] == "cost" and len(parts) == 3 and row.get("value") is not None:
                epochs[row["epoch"]][parts[1]][parts[2]] = row["value"]
    lines = []
    for epoch, names in sorted(epochs.items()):
        train = names.pop("train", {})
        lines.append(
            f"epoch {epoch}: training {train.get('seconds', 0):.1f} s, "
            f"{train.get('forwards', 0):,.0f} forward passes a rank (forward + backward = 3 an image)"
        )
        lines.append(f"  {'analysis':<12}{'seconds':>9}{'forwards/rank':>15}{'share':>9}")
        for name, v in names.items():
            share = v.get("share")
            shown = f"{100 * share:.2f}%" if share is not None else "-"
            lines.append(
                f"  {name:<12}{v.get('seconds', 0):>9.1f}{v.get('forwards', 0):>15,.0f}{shown:>9}"
            )
    return lines


def rehearse(argv: list[str]) -> int:
    cfg, extra = parse_args(argv)
    out = Path(cfg.out)
    if out.exists():
        if not cfg.overwrite:
            raise ConfigError(f"out={out} exists; pass overwrite=true or choose another folder")
        shutil.rmtree(out)
    data, run = out / "data", out / "run"
    started = time.perf_counter()
    from zflight.data.export import write_image_folder

    counts = write_image_folder(data, cfg.classes, cfg.train_per_class, cfg.val_per_class, cfg.size)
    wrote = time.perf_counter() - started
    print(
        f"rehearsal: wrote {counts['train']} training and {counts['val']} validation {cfg.size} px "
        f"JPEGs {'with' if cfg.masks else 'without'} masks to {data} in {wrote:.1f} s",
        flush=True,
    )
    args = train_overrides(cfg, data.resolve(), run.resolve(), extra)
    print("rehearsal: python -m zflight.train " + " ".join(args), flush=True)
    started = time.perf_counter()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    code = subprocess.call([sys.executable, "-m", "zflight.train", *args], env=env)
    ran = time.perf_counter() - started
    print(f"rehearsal: the run took {ran:.1f} s (exit code {code}); what each part cost:")
    for line in cost_table(run / "viz" / "scalars.jsonl"):
        print(line)
    print(f"rehearsal: {wrote + ran:.1f} s in all", flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    try:
        return rehearse(list(sys.argv[1:] if argv is None else argv))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
