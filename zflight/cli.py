"""The ``zflight`` console script: ``zflight train key=value ...`` or ``zflight visualize ...``."""

from __future__ import annotations

import sys

USAGE = """usage: zflight {train,visualize} [key=value ...]

  train       train ZFNet (python -m zflight.train)
  visualize   run visual callbacks on a saved checkpoint (python -m zflight.visualize)
"""


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = args[0], args[1:]
    if command == "train":
        from zflight.train import main as run
    elif command == "visualize":
        from zflight.visualize import main as run
    else:
        print(f"unknown command {command!r}\n{USAGE}", file=sys.stderr)
        return 2
    return run(rest)
