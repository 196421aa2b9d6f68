"""The run's gallery, ``<run_dir>/viz/index.html``: one offline page to browse a run.

A header with the run's configuration, final accuracy and training curves; one card per figure key
showing its latest epoch with a control to step through epochs; the callbacks' scalars as small
charts. The page is the template in ``gallery_static/`` with its CSS, script and this run's data
inlined, so it opens from ``file://`` with no network and no other file but the PNGs it shows
(loaded lazily). ``gallery_index.write_gallery`` keeps it up to date.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

from PIL import Image

_EPOCH_PNG = re.compile(r"epoch_(\d+)\.png$")
# rebuilt after every callback's output: what is unchanged on disk is not read again
_HEADERS: dict[Path, tuple[int, tuple[int, int, str]]] = {}
_CONFIGS: dict[Path, tuple[int, list[list[str]]]] = {}
_MARK = re.compile(r"/\*(STYLE|SCRIPT|DATA)\*/|<!--(FALLBACK|TITLE|CHUNKS)-->")
# (label, dotted config key) pairs shown in the header when the run's config.yaml has them
CONFIG_SUMMARY = (
    ("model", "model.name"),
    ("width", "model.width"),
    ("data", "data.name"),
    ("image size", "data.image_size"),
    ("training images", "data.train_size"),
    ("validation images", "data.val_size"),
    ("batch size", "data.batch_size"),
    ("optimiser", "optim.name"),
    ("learning rate", "optim.lr"),
    ("schedule", "optim.schedule"),
    ("epochs", "trainer.max_epochs"),
    ("precision", "trainer.precision"),
    ("seed", "seed"),
)


def parse_rows(lines: Iterable[str], needs_key: bool = False) -> tuple[list[dict[str, Any]], int]:
    """The rows of JSON lines, and how many lines were damaged and skipped: cut short by a crash,
    not JSON, not an object, or without an integer ``epoch`` (and a ``key``, for scalars)."""
    rows, damaged = [], 0
    for line in lines:
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            ok = isinstance(row, dict) and isinstance(row.get("epoch"), int)
            ok = ok and (not needs_key or isinstance(row.get("key"), str))
        except ValueError:
            ok = False
        if ok:
            rows.append(row)
        else:
            damaged += 1
    return rows, damaged


def read_jsonl(path: Path, needs_key: bool = False) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file; a missing file gives none, damaged lines are skipped."""
    if not path.exists():
        return []
    return parse_rows(path.read_text(errors="replace").splitlines(), needs_key)[0]


def _png_header(path: Path) -> tuple[int, int, str]:
    """A PNG's width, height and ``Description`` (its caption) from the chunks before its pixels,
    remembered while the file is unchanged."""
    stamp = path.stat().st_mtime_ns
    if _HEADERS.get(path, (None,))[0] != stamp:
        with Image.open(path) as im:
            _HEADERS[path] = (stamp, (*im.size, str(im.info.get("Description", ""))))
    return _HEADERS[path][1]


def config_summary(path: Path) -> list[list[str]]:
    """``[label, value]`` pairs from the run's ``config.yaml`` (empty when there is none)."""
    if not path.exists():
        return []
    stamp = path.stat().st_mtime_ns
    if _CONFIGS.get(path, (None,))[0] != stamp:
        _CONFIGS[path] = (stamp, _read_summary(path))
    return _CONFIGS[path][1]


def _read_summary(path: Path) -> list[list[str]]:
    from omegaconf import OmegaConf

    try:
        cfg = OmegaConf.load(path)
    except Exception:
        return []
    pairs = []
    for label, key in CONFIG_SUMMARY:
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None:
            pairs.append([label, str(value)])
    return pairs


# The sections in the paper's order; a callback not listed here (a custom one) follows, by name.
PAPER_ORDER = (
    ("deconv", "deconvnet projections (Fig. 2)"),
    ("evolution", "feature evolution (Fig. 4)"),
    ("occlusion", "occlusion sensitivity (Fig. 7)"),
    ("filters", "filter health (Fig. 6)"),
    ("heatmaps", "heat maps: Grad-CAM and saliency"),
    ("actmax", "activation maximisation"),
    ("invariance", "invariance (Fig. 5)"),
)


def section_order(keys: list[str]) -> list[list[str]]:
    """``[[name, title], ...]`` for the sections of these ``<callback>/<key>`` keys: the paper's
    analyses in its order, then any other callback by name (its title is its name)."""
    names = {k.split("/")[0] for k in keys}
    known = [[n, title] for n, title in PAPER_ORDER if n in names]
    return known + [[n, n] for n in sorted(names - {n for n, _ in PAPER_ORDER})]


def figure_frames(root: Path) -> dict[str, list[list[Any]]]:
    """``key -> [[epoch, relative path, width, height, caption], ...]`` by epoch for every PNG."""
    frames: dict[str, list[list[Any]]] = {}
    for png in sorted(root.rglob("epoch_*.png")):
        m = _EPOCH_PNG.search(png.name)
        if not m:
            continue
        try:
            w, h, text = _png_header(png)
        except OSError:  # being written right now: the next rebuild shows it
            continue
        key = png.parent.relative_to(root).as_posix()
        frames.setdefault(key, []).append(
            [int(m.group(1)), png.relative_to(root).as_posix(), w, h, text]
        )
    return {k: sorted(v) for k, v in sorted(frames.items())}


def scalar_series(rows: list[dict[str, Any]]) -> dict[str, list[list[Any]]]:
    """``key -> [[epoch, value or None], ...]``. Duplicates of one (epoch, key), left by a run
    stopped during its analyses and resumed, are resolved here: the row written last wins."""
    series: dict[str, dict[int, Any]] = {}
    for r in rows:
        value = r.get("value")
        if isinstance(value, float) and not math.isfinite(value):
            value = None
        series.setdefault(r["key"], {})[int(r["epoch"])] = value
    return {k: [[e, v] for e, v in sorted(by.items())] for k, by in sorted(series.items())}


def epoch_metrics(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per epoch from ``metrics.jsonl`` (a later row for the same epoch wins)."""
    by_epoch = {int(r["epoch"]): r for r in rows if "epoch" in r}
    return [by_epoch[e] for e in sorted(by_epoch)]


def gallery_data(root: Path) -> dict[str, Any]:
    """Everything the page shows, gathered from ``root`` (``viz/``) and the run's config."""
    figures = figure_frames(root)
    scalars = scalar_series(read_jsonl(root / "scalars.jsonl", needs_key=True))
    return {
        "run": root.parent.name,
        "config": config_summary(root.parent / "config.yaml"),
        "metrics": epoch_metrics(read_jsonl(root / "metrics.jsonl")),
        "figures": figures,
        "scalars": scalars,
        "sections": section_order([*figures, *scalars]),
    }


def _static(name: str) -> str:
    return (resources.files("zflight.callbacks") / "gallery_static" / name).read_text("utf-8")


def render(data: dict[str, Any], chunks: Iterable[str] = (), folders: Iterable[str] = ()) -> str:
    """The page: template with CSS, script and data inlined, the data files ``chunks`` (relative
    paths, loaded before the script), and a plain list without scripts (``folders``: figure keys
    whose epochs are in the data files, linked as folders)."""
    payload = json.dumps(data, allow_nan=False, separators=(",", ":")).replace("</", "<\\/")
    fallback = "".join(
        f"<li>{html.escape(key)}: "
        + ", ".join(f'<a href="{html.escape(p)}">epoch {e}</a>' for e, p, *_ in frames)
        + "</li>"
        for key, frames in data["figures"].items()
    ) + "".join(f'<li><a href="{html.escape(k)}/">{html.escape(k)}</a></li>' for k in folders)
    parts = {
        "STYLE": _static("gallery.css"),
        "SCRIPT": _static("gallery.js"),
        "DATA": payload,
        "FALLBACK": f"<ul>{fallback}</ul>",
        "TITLE": html.escape(data["run"]),
        "CHUNKS": "".join(f'<script src="{html.escape(c)}"></script>' for c in chunks),
    }
    # one pass: text put in is never searched again for marks
    return _MARK.sub(lambda m: parts[m.group(1) or m.group(2)], _static("template.html"))
