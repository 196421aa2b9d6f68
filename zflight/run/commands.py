"""What every entry point shares: ``--help``, ``print_config=true``, and one clear line with exit
code 2 for a bad config or input (1 for a run that failed). Imports nothing heavy, so a config
error appears before torch is loaded."""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable
from typing import Any

from zflight.config import ConfigError, TrainConfig, groups


class RunFailure(RuntimeError):
    """A run that started and failed for a reason worth one paragraph, not a traceback (exit 1).

    ``quiet``: another process (a DDP rank other than 0) says the same; print nothing.
    ``exit_code``: what the process exits with (a subclass may say otherwise)."""

    exit_code = 1

    def __init__(self, message: str, quiet: bool = False) -> None:
        super().__init__(message)
        self.quiet = quiet


class NothingToDo(Exception):
    """The command has nothing to do (a resume already at its last epoch): one line, exit code 0."""


def main_keys() -> str:
    """Every config key, by section, read from the schema (so it cannot go stale)."""
    top = [f.name for f in dataclasses.fields(TrainConfig) if not _is_section(f)]
    top.remove("callbacks")  # a line of its own below
    lines = [f"  {', '.join(top)}"]
    for f in dataclasses.fields(TrainConfig):
        if _is_section(f):
            names = [g.name for g in dataclasses.fields(f.default_factory())]  # type: ignore[misc]
            lines.append(f"  {f.name}.{{{','.join(names)}}}")
    lines.append("  callbacks.<name>.<argument>   (callbacks.<name>=null switches one off)")
    return "\n".join(lines)


def _is_section(f: dataclasses.Field) -> bool:
    factory = f.default_factory
    return factory is not dataclasses.MISSING and dataclasses.is_dataclass(factory)


def groups_text() -> str:
    return "\n".join(f"  {g}={'|'.join(names)}" for g, names in groups().items())


TRAIN_USAGE = """usage: python -m zflight.train [GROUP=choice ...] [key=value ...]
       zflight train [GROUP=choice ...] [key=value ...]

Train ZFNet: configs/train.yaml, then experiment=NAME, then group choices, then key=value.
  print_config=true                 print the resolved config and exit
  resume=RUN/checkpoints/last.ckpt  continue that run (checked before anything is written)

groups:
{groups}

keys:
{keys}

examples:
  python -m zflight.train trainer.max_epochs=20 logger=csv
  python -m zflight.train experiment=imagenet data.root=/data/imagenet trainer.devices=4
  python -m zflight.train resume=runs/20261128-003638-shapes/checkpoints/last.ckpt
"""


def usage(template: str) -> str:
    return template.format(groups=groups_text(), keys=main_keys())


def wants_help(argv: list[str]) -> bool:
    return any(a in ("-h", "--help", "help") for a in argv)


def pop_flag(argv: list[str], key: str) -> tuple[list[str], bool]:
    """Remove ``key=value`` from ``argv``; return the rest and whether the value was true."""
    rest, on = [], False
    for a in argv:
        k, _, v = a.partition("=")
        if k == key:
            if v.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ConfigError(f"{key}={v!r}: expected true or false")
            on = v.lower() in ("true", "1", "yes")
        else:
            rest.append(a)
    return rest, on


def print_help(text: str) -> None:
    """Print ``text``; a reader that stops early (``--help | head``) is not an error."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit either


def run_command(
    command: Callable[[list[str]], Any], argv: list[str] | None, help_text: str = ""
) -> int:
    """Run an entry point on ``key=value`` arguments: ``--help`` prints ``help_text``; a ConfigError
    prints one line and returns 2; a RunFailure prints its message and returns its exit code (1, or
    128 + signal for a run stopped on a signal)."""
    args = sys.argv[1:] if argv is None else list(argv)
    if help_text and wants_help(args):
        print_help(help_text)
        return 0
    try:
        command(args)
    except NothingToDo as exc:
        print(exc, flush=True)
        return 0
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RunFailure as exc:
        if not exc.quiet:
            prefix = "error: " if exc.exit_code == 1 else ""
            print(f"{prefix}{exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    return 0


def split_own_keys(settings: Any, argv: list[str]) -> list[str]:
    """Set a command's own ``key=value`` arguments on ``settings`` (a dataclass instance, each field
    parsed as its default's type; booleans from 1/true/yes) and return the rest, for training."""
    own = {f.name for f in dataclasses.fields(settings)}
    passthrough = []
    for item in argv:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"argument {item!r} is not key=value")
        if key not in own:
            passthrough.append(item)
            continue
        kind = type(getattr(settings, key))
        try:
            parsed = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
        except ValueError:
            raise ConfigError(f"{key}={value!r}: expected {kind.__name__}") from None
        setattr(settings, key, parsed)
    return passthrough
