"""The README's custom-callback example works exactly as written."""

from __future__ import annotations

import json
import re
import subprocess
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


def bash_lines(part: str) -> list[list[str]]:
    """The README's shell commands (```bash blocks) that contain ``part``, comments cut."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.DOTALL)
    lines = [line.split("#")[0].split() for block in blocks for line in block.splitlines()]
    return [words for words in lines if part in " ".join(words)]


def test_readme_train_commands_give_valid_configs(capsys):
    from zflight.train import main

    commands = bash_lines("-m zflight.train")  # python -m and torchrun -m
    assert len(commands) >= 3
    for words in commands:
        args = words[words.index("zflight.train") + 1 :]
        args = [w for w in args if not w.startswith("data.root=")]  # folders we lack here
        assert main([*args, "data.root=/data", "print_config=true"]) == 0, words
        assert "model:" in capsys.readouterr().out


def test_readme_visualize_commands_name_real_callbacks(tmp_path, capsys):
    from zflight.config import load_config
    from zflight.train import build_callbacks

    commands = bash_lines("python -m zflight.visualize") + bash_lines("make visualize")
    assert len(commands) == 2
    for words in commands:
        keys = [w for w in words if "=" in w and not w.startswith(("ckpt=", "CKPT="))]
        assert build_callbacks(load_config(keys)), words  # a callbacks set that builds
    p = subprocess.run(["make", "-n", "visualize", "CKPT=x.ckpt"], capture_output=True, text=True)
    assert p.returncode == 0 and "-m zflight.visualize ckpt=x.ckpt" in p.stdout
