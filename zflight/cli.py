"""The ``zflight`` console script: ``zflight train key=value ...`` or ``zflight visualize ...``."""

from __future__ import annotations

import os
import sys

from zflight.run.commands import groups_text, main_keys, print_help

USAGE = """usage: zflight {{train,visualize}} [GROUP=choice ...] [key=value ...]
       zflight {{train,visualize}} --help

  train       train ZFNet (python -m zflight.train)
  visualize   run the visual callbacks on a saved checkpoint (python -m zflight.visualize)

groups:
{groups}

keys:
{keys}
"""


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    text = USAGE.format(groups=groups_text(), keys=main_keys())
    if not args or args[0] in ("-h", "--help", "help"):
        print_help(text)
        return 0
    command, rest = args[0], args[1:]
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(
            0, os.getcwd()
        )  # `_target_: my_callbacks.X` from here, as `python -m` finds it
    if command == "train":
        from zflight.train import main as run
    elif command == "visualize":
        from zflight.visualize import main as run
    else:
        print(f"error: unknown command {command!r}; use train or visualize", file=sys.stderr)
        return 2
    return run(rest)
