"""The README's custom-callback example works exactly as written."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from tests.conftest import tiny_overrides
from zflight.train import train

README = Path(__file__).resolve().parent.parent / "README.md"


def test_custom_callback_example(tmp_path, monkeypatch):
    text = README.read_text()
    code = re.search(r"```python\n# my_callbacks.py\n(.*?)```", text, re.DOTALL).group(1)
    command = re.search(r"python -m zflight.train (callbacks\.mean\.[^\n]*)", text).group(1).split()
    (tmp_path / "my_callbacks.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("my_callbacks", None)
    r = train(tiny_overrides(tmp_path / "run", *command))
    viz = Path(r["run_dir"]) / "viz"
    assert (viz / "mean_image" / "mean" / "epoch_0001.png").exists()
    rows = [json.loads(x) for x in (viz / "scalars.jsonl").read_text().splitlines()]
    conf = [x["value"] for x in rows if x["key"] == "mean_image/confidence"]
    assert len(conf) == 1 and 0.0 < conf[0] < 1.0
