"""``python -m zflight.visualize ckpt=PATH [out=DIR] [callbacks=SET] [key=value ...]``: run the visual
callbacks once on a saved checkpoint, without training, into a folder of its own.

The run's saved ``config.yaml`` (beside ``checkpoints/``) is the starting point, so the model and
data are rebuilt as they were trained, and the callbacks' state saved in the checkpoint is loaded
(the evolution strip keeps its history). Output goes to ``out=DIR``, by default a new
``<run>-visualize-<date>-<time>`` beside the run: the training run's files are never touched.
Gradient-based analyses work (validation runs with gradients allowed). Exit code 1 when an analysis
fails, 2 for a bad checkpoint or config."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from zflight.config import ConfigError, load_config, to_yaml
from zflight.run.commands import RunFailure, groups_text, run_command
from zflight.run.lock import RunLock, claim_new_directory
from zflight.run.run_dir import ensure_writable, run_of_checkpoint
from zflight.run.signatures import check_callback_arguments

USAGE = """usage: python -m zflight.visualize ckpt=PATH [out=DIR] [GROUP=choice ...] [key=value ...]
       zflight visualize ckpt=PATH ...        make visualize CKPT=PATH [ARGS="..."]

Run the visual callbacks once on a checkpoint written by zflight.train, without training.
  ckpt=PATH   runs/<run>/checkpoints/last.ckpt or best.ckpt (its run's config.yaml is the base)
  out=DIR     where viz/ goes (default: a new <run>-visualize-<date>-<time> beside the run;
              never the training run itself)
  callbacks=none|default, callbacks.<name>.<argument>=value, callbacks.<name>=null: as in training
  trainer.accelerator=cpu|gpu, trainer.limit_val_batches=..., data.*: any training key

groups:
{groups}
"""


def default_out(beside: Path) -> Path:
    """``<beside>-visualize-<date>-<time>``: a new folder next to the run (or checkpoint); a
    ``-2``, ``-3``... suffix when one of that name exists (two calls within a second)."""
    stem = beside.parent / f"{beside.name}-visualize-{time.strftime('%Y%m%d-%H%M%S')}"
    out, n = stem, 1
    while out.exists():
        n += 1
        out = stem.with_name(f"{stem.name}-{n}")
    return out


def _saved_config(run_dir: Path, ckpt: Path) -> Any:
    """The run's ``config.yaml``; a ConfigError naming it when it cannot be read."""
    path = run_dir / "config.yaml"
    try:
        return OmegaConf.load(path)
    except Exception as exc:
        detail = (str(exc).strip().splitlines() or [""])[0][:160]
        raise ConfigError(
            f"ckpt={ckpt}: its run's {path} cannot be read ({type(exc).__name__}: {detail}); "
            "repair it: visualize starts from the run's config"
        ) from None


def visualize(argv: list[str]) -> Path:
    """Run the configured callbacks once on the checkpoint; return the gallery's path."""
    options = dict(a.split("=", 1) for a in argv if a.split("=", 1)[0] in ("ckpt", "out"))
    rest = [a for a in argv if a.split("=", 1)[0] not in ("ckpt", "out")]
    if "ckpt" not in options:
        raise ConfigError("visualize needs ckpt=PATH (a checkpoint written by zflight.train)")
    ckpt = Path(options["ckpt"])
    if not ckpt.is_file():
        raise ConfigError(f"ckpt={ckpt}: no such file")
    run_dir = run_of_checkpoint(ckpt)
    base = _saved_config(run_dir, ckpt) if run_dir else None
    cfg = load_config(rest, base=base)
    check_callback_arguments(cfg)  # from the source, before torch is imported
    beside = run_dir or ckpt.parent / ckpt.stem
    given = bool(options.get("out"))
    out = Path(options["out"]) if given else default_out(beside)
    if run_dir and (
        out.resolve() == run_dir.resolve() or run_dir.resolve() in out.resolve().parents
    ):
        raise ConfigError(
            f"out={out} is inside the training run {run_dir}, whose files it would change; "
            f"choose a folder outside it (the default is a new one beside it)"
        )
    if (out / "viz").exists():
        raise ConfigError(f"out={out} already holds a viz/ folder; choose a new folder")

    from zflight.callbacks.base import VisualizationCallback
    from zflight.run import build

    build.check_devices(cfg)
    callbacks = build.build_callbacks(cfg)
    visual = [c for c in callbacks if isinstance(c, VisualizationCallback)]
    if not visual:
        raise ConfigError(
            "no visual callbacks configured: pass callbacks=default or callbacks.<name>._target_=..."
        )
    if not given:
        out = claim_new_directory(out)  # two calls in the same second get two folders
    lock = RunLock(out, "out").acquire()
    try:
        return _visualize(cfg, ckpt, out, callbacks, visual)
    finally:
        lock.release()


def _visualize(cfg: Any, ckpt: Path, out: Path, callbacks: list, visual: list) -> Path:
    """Load the checkpoint, run the callbacks once into ``out`` and report which failed."""
    import lightning.pytorch as pl

    from zflight.callbacks.ledger import CostLedger
    from zflight.callbacks.run_record import RunRecord
    from zflight.run import build
    from zflight.run.checkpoints import check_matches, finished_epoch, read_checkpoint
    from zflight.run.console import quiet_console, write_line

    state: dict[str, Any] = read_checkpoint(ckpt, "ckpt")
    datamodule = build.build_datamodule(cfg)
    module = build.build_module(
        cfg, build.build_model(cfg, datamodule.num_classes), datamodule.num_classes
    )
    check_matches(state, ckpt, "ckpt", cfg, module)
    module.load_state_dict(state["state_dict"])
    saved_states = state.get("callbacks", {})
    for cb in callbacks:  # the evolution strip's history and the like
        if cb.state_key in saved_states:
            cb.load_state_dict(saved_states[cb.state_key])
    epoch = finished_epoch(state)
    del state
    ensure_writable(out, "out")
    (out / "config.yaml").write_text(f"# visualize ckpt={ckpt}\n{to_yaml(cfg)}")
    trainer = pl.Trainer(
        default_root_dir=str(out),
        logger=False,
        # RunRecord: the gallery's header shows the checkpoint's validation accuracy
        callbacks=[
            *callbacks,
            RunRecord(),
            CostLedger(write_line),
            *quiet_console(progress=cfg.trainer.progress),
        ],
        accelerator=cfg.trainer.accelerator,
        devices=1,
        enable_checkpointing=False,
        enable_progress_bar=cfg.trainer.progress,
        limit_val_batches=cfg.trainer.limit_val_batches,
        inference_mode=False,  # no_grad instead: callbacks with grad=True can enable gradients
    )
    trainer.fit_loop.epoch_progress.current.completed = epoch  # PNGs named by the ckpt's epoch
    runs_before = {id(cb): len(cb.logged_epochs) for cb in visual}
    trainer.validate(module, datamodule=datamodule, verbose=False)
    gallery = out / "viz" / "index.html"
    print(f"pictures: {gallery}", flush=True)
    failed = [cb.name for cb in visual if len(cb.logged_epochs) == runs_before[id(cb)]]
    if failed:
        raise RunFailure(
            f"{len(failed)} of {len(visual)} analyses failed ({', '.join(failed)}); "
            f"their errors are above, the other pictures are in {gallery}"
        )
    return gallery


def main(argv: list[str] | None = None) -> int:
    return run_command(visualize, argv, USAGE.format(groups=groups_text()))


if __name__ == "__main__":
    sys.exit(main())
