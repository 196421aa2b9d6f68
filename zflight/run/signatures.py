"""Callback arguments checked from the class's source, before torch is imported: a typo or a value
of the wrong type in ``callbacks.<name>.<argument>`` is one line in well under a second.

The class named by ``_target_`` is found without running any code: its module's file is located on
``sys.path`` (``importlib.machinery.PathFinder``), parsed with ``ast``, and its ``__init__``
signature read, following ``**kwargs`` up the bases as ``zflight.run.targets`` does at run time.
Where the source cannot tell (a compiled module, a class built dynamically), nothing is said here
and the check at construction time still applies. Standard library only.
"""

from __future__ import annotations

import ast
import difflib
import importlib.machinery
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from zflight.config import BUDGET_KEY, ConfigError


@dataclass
class Parameter:
    name: str
    annotation: str | None
    owner: str


def module_source(module: str) -> Path | None:
    """The ``.py`` file of a dotted module name, found without importing it or its packages."""
    parts = module.split(".")
    try:  # a top-level name is looked up without being imported (editable installs included)
        spec = importlib.util.find_spec(parts[0])
    except (ImportError, ValueError):
        return None
    for i in range(1, len(parts)):
        if spec is None:
            return None
        paths = list(spec.submodule_search_locations or [])
        spec = importlib.machinery.PathFinder.find_spec(".".join(parts[: i + 1]), paths)
    if spec is None:
        return None
    origin = getattr(spec, "origin", None)
    return Path(origin) if origin and origin.endswith(".py") else None


def _parse(module: str) -> ast.Module | None:
    path = module_source(module)
    if path is None:
        return None
    try:
        return ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return None


def _imported_names(tree: ast.Module, module: str) -> dict[str, str]:
    """Local name -> dotted path, from the module's ``import`` and ``from ... import`` lines."""
    names: dict[str, str] = {}
    package = module.rsplit(".", 1)[0] if "." in module else ""
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            for alias in node.names:
                names[alias.asname or alias.name] = f"{base}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                names[alias.asname or alias.name.split(".")[0]] = (
                    alias.name if alias.asname else alias.name.split(".")[0]
                )
    return names


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return f"{inner}.{node.attr}" if inner else None
    return None


def class_parameters(target: str, depth: int = 0) -> list[Parameter] | None:
    """The keyword arguments ``target(...)`` accepts, from source; None where it cannot tell."""
    if depth > 12 or "." not in target:
        return None
    module, name = target.rsplit(".", 1)
    if target in ("builtins.object", "object"):
        return []
    tree = _parse(module)
    if tree is None:
        return None
    imported = _imported_names(tree, module)
    cls = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name), None)
    if cls is None:  # re-exported from another module
        return class_parameters(imported[name], depth + 1) if name in imported else None
    init = next(
        (n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None
    )
    params: list[Parameter] = []
    if init is not None:
        args = init.args
        for a in [*args.args[1:], *args.kwonlyargs]:
            annotation = ast.unparse(a.annotation) if a.annotation is not None else None
            params.append(Parameter(a.arg, annotation, name))
        if args.kwarg is None:
            return params
    for base in cls.bases:  # no __init__, or **kwargs passed on: the bases' arguments count too
        dotted = _dotted(base)
        if dotted is None:
            return None
        head, _, rest = dotted.partition(".")
        path = imported.get(head, f"{module}.{head}")
        found = class_parameters(f"{path}.{rest}" if rest else path, depth + 1)
        if found is None:
            return None
        params += [p for p in found if p.name not in {q.name for q in params}]
    return params


_SIMPLE = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}


def type_problem(value: Any, annotation: str | None) -> str | None:
    """What is wrong with ``value`` for a simple annotation (int, float, bool, str, lists, ``|
    None``); None when it fits or the annotation is not one of those."""
    if annotation is None:
        return None
    options = [a.strip() for a in annotation.replace("Optional[", "").rstrip("]").split("|")]
    if value is None:
        return None if "None" in options else f"expected {annotation}, got null"
    wanted: list[type] = []
    for option in options:
        base = option.split("[")[0]
        if base in _SIMPLE:
            wanted += _SIMPLE[base]
        elif base in ("list", "tuple", "Sequence", "ListConfig"):
            wanted += [list, tuple]
        elif base != "None":
            return None  # a type this check does not know: the constructor decides
    if isinstance(value, bool) and bool not in wanted:
        return f"expected {annotation}, got {value!r}"
    if not isinstance(value, tuple(wanted)):
        return f"expected {annotation}, got {value!r}"
    return None


def check_callback_arguments(cfg: DictConfig) -> None:
    """ConfigError for the first unknown or mistyped argument of any configured callback."""
    for key, spec in cfg.callbacks.items():
        if spec is None or key == BUDGET_KEY:  # callbacks.budget is a share, not a callback
            continue
        spec = OmegaConf.to_container(spec, resolve=True)
        target = str(spec.pop("_target_"))
        params = class_parameters(target)
        if params is None:
            continue
        valid = [p.name for p in params]
        for name, value in spec.items():
            where = f"callbacks.{key}.{name}"
            if name not in valid:
                close = difflib.get_close_matches(name, valid, n=1)
                hint = f" (did you mean callbacks.{key}.{close[0]}?)" if close else ""
                raise ConfigError(
                    f"{where}: {target} has no argument {name!r}{hint}; valid: {', '.join(valid)}"
                )
            param = next(p for p in params if p.name == name)
            problem = type_problem(value, param.annotation)
            if problem:
                raise ConfigError(f"{where}={value!r}: {problem} ({param.owner}'s {name})")
