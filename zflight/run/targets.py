"""``_target_`` construction: build ``spec["_target_"](**arguments)``, checking the arguments against
the signature first, so a typo stops the run before anything starts, naming the key and the valid
arguments."""

from __future__ import annotations

import difflib
import importlib
import inspect
from typing import Any

from omegaconf import DictConfig, OmegaConf

from zflight.config import ConfigError


def accepted_arguments(obj: Any) -> list[str] | None:
    """Keyword arguments ``obj(...)`` takes, following ``**kwargs`` up a class's bases (a subclass
    that passes ``**kwargs`` to ``super().__init__`` takes its base's too); None when unknowable."""
    if not inspect.isclass(obj):
        try:
            params = inspect.signature(obj).parameters.values()
        except (TypeError, ValueError):
            return None
        if any(p.kind is p.VAR_KEYWORD for p in params):
            return None
        return [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.POSITIONAL_ONLY)]
    names: list[str] = []
    for cls in obj.__mro__:
        if "__init__" not in vars(cls):
            continue
        if cls is object:
            return names
        if cls.__module__ == "builtins":
            return None  # **kwargs reach a built-in base whose arguments cannot be read

        try:
            params = list(inspect.signature(vars(cls)["__init__"]).parameters.values())[1:]
        except (TypeError, ValueError):
            return None
        names += [
            p.name
            for p in params
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY)
            and p.name not in names
        ]
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return names
    return None


def import_target(target: str, key: str) -> Any:
    """The object a dotted ``_target_`` path names."""
    module_name, _, attr = target.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"{key}._target_={target!r} cannot be imported: {exc}") from None


def instantiate(spec: DictConfig | dict, key: str, **extra: Any) -> Any:
    """Build ``spec["_target_"](**rest, **extra)``; errors name the config key and the valid arguments."""
    spec = (
        OmegaConf.to_container(spec, resolve=True) if isinstance(spec, DictConfig) else dict(spec)
    )
    target = spec.pop("_target_")
    obj = import_target(target, key)
    kwargs = {**spec, **extra}
    valid = accepted_arguments(obj)
    if valid is not None:
        for name in kwargs:
            if name not in valid:
                close = difflib.get_close_matches(name, valid, n=1)
                hint = f" (did you mean {key}.{close[0]}?)" if close else ""
                raise ConfigError(
                    f"{key}.{name}: {target} has no argument {name!r}{hint}; "
                    f"valid: {', '.join(valid)}"
                )
    try:
        inspect.signature(obj).bind(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{key}: {exc}; {target} takes: {', '.join(valid or [])}") from None
    except ValueError:
        pass  # no signature to check (a builtin): the call below reports
    try:
        return obj(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key}: {exc}") from None
