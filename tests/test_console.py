"""A quiet console: a training run prints its progress bar, one line per analysis epoch and the
summary; start-up notices are gone and a warning stands on a line of its own."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
from lightning.pytorch.utilities import rank_zero_warn

from tests.conftest import tiny_overrides
from tests.helpers import Recording
from zflight.run.console import ProgressBar, analysis_line, show_warning

NOISE = [
    "litlogger",  # Lightning's tip
    "limit_train_batches",  # the two `limit_*_batches` notices
    "limit_val_batches",
    "anonymous",  # W&B's setting warning
    "LeafSpec",  # a torch deprecation inside Lightning
    "FLOPs",  # the model summary
    "Total params",
    "GPU available",
    "rank_zero_warn(",  # the source line a default warning prints after its message
]


class Warns(Recording):
    """Records like ``Recording`` and warns once, as the filter-health alert does."""

    name = "warns"

    def analyze(self, model, probe, ctx):
        if ctx.epoch == 1:
            rank_zero_warn("filters look odd: try a lower learning rate")
        return super().analyze(model, probe, ctx)


@pytest.mark.slow
def test_default_run_prints_progress_analysis_lines_and_summary_only(tmp_path):
    args = tiny_overrides(
        tmp_path / "run",
        "trainer.progress=true",
        "logger=wandb",
        "callbacks.warns._target_=tests.test_console.Warns",
    )
    env = {**os.environ, "WANDB_MODE": "offline", "HOME": str(tmp_path), "PYTHONWARNINGS": ""}
    done = subprocess.run(
        [sys.executable, "-m", "zflight.train", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # one stream, in order: shows what is glued to what
        text=True,
        timeout=300,
        env=env,
        cwd=Path(__file__).resolve().parent.parent,
    )
    out = done.stdout
    assert done.returncode == 0, out[-3000:]
    for noise in NOISE:
        assert noise not in out, f"{noise!r} printed:\n{out[-3000:]}"
    # lines as a terminal shows them: tqdm moves the cursor with ANSI codes and redraws with \r
    lines = re.split(r"[\r\n]+", re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", out))
    for epoch in (0, 1):
        assert any(
            re.fullmatch(rf"epoch {epoch}: analyses \d+\.\d s \(warns \d+\.\d\)", x) for x in lines
        )
    warning = "warning: filters look odd: try a lower learning rate"
    assert out.count("filters look odd") == 1 and warning in lines, out[-3000:]
    assert (
        lines[lines.index(warning) + 1].strip() == "" or "Epoch" in lines[lines.index(warning) + 1]
    )
    assert "final validation accuracy: top-1" in out and "Epoch 1: 100%" in out
    last_bar = [x for x in lines if x.startswith("Epoch 1: 100%")][-1]
    assert "val_acc=" in last_bar and "v_num" not in out, last_bar


def test_analysis_line():
    times = {"deconv": 1.14, "occlusion": 0.9, "actmax": 2.16}
    assert (
        analysis_line(3, times) == "epoch 3: analyses 4.2 s (deconv 1.1, occlusion 0.9, actmax 2.2)"
    )


def test_warning_is_one_line_and_still_recorded_by_catch_warnings(capsys, monkeypatch):
    # outside any recording: one line on stderr, no source line
    monkeypatch.setattr(warnings, "_showwarnmsg_impl", lambda msg: pytest.fail("not recording"))
    show_warning(UserWarning("disk nearly full"), UserWarning, "somewhere.py", 7, None, "src()")
    assert capsys.readouterr().err == "warning: disk nearly full\n"
    # inside catch_warnings(record=True) (pytest.warns), whose recorder is a list's append
    caught: list[warnings.WarningMessage] = []
    monkeypatch.setattr(warnings, "_showwarnmsg_impl", caught.append)
    show_warning(UserWarning("recorded, not printed"), UserWarning, "somewhere.py", 8)
    assert [(str(w.message), w.lineno) for w in caught] == [("recorded, not printed", 8)]
    assert capsys.readouterr().err == ""


def test_progress_bar_shows_validation_accuracy_at_120_columns():
    import io

    from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

    logger = SimpleNamespace(version=12)
    trainer = SimpleNamespace(
        loggers=[logger],
        progress_bar_metrics={
            "train/loss": 0.312,
            "train/acc": 0.906,
            "val/loss": 0.285,
            "val/acc1": 0.912,
        },
    )
    metrics = ProgressBar().get_metrics(trainer, None)
    assert metrics == {"loss": 0.312, "acc": 0.906, "val_loss": 0.285, "val_acc": 0.912}
    # as Lightning draws it at the end of a long epoch of a long run, on a 120-column terminal
    bar = Tqdm(total=5005, desc="Epoch 89", ncols=120, file=io.StringIO(), dynamic_ncols=False)
    bar.n = 5005
    bar.set_postfix(metrics)
    line = str(bar)
    assert len(line) <= 120 and "val_acc=0.912" in line, line


def test_first_render_of_the_data_set_says_so(tmp_path, capsys):
    from zflight.data import ShapesDataModule

    dm = ShapesDataModule(16, 8, 32, batch_size=8, cache_dir=str(tmp_path))
    dm.setup("fit")
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("shapes: rendering 8 validation images (32 px) once; later runs read")
    assert re.fullmatch(r"shapes: rendered 8 validation images \(32 px\) in \d+\.\d s", out[1])
    assert out[2].startswith("shapes: rendering 16 training images (32 px) once")
    ShapesDataModule(16, 8, 32, batch_size=8, cache_dir=str(tmp_path)).setup("fit")
    assert capsys.readouterr().out == "", "a cached data set is read without a word"
