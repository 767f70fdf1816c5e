"""Plug-ins named by ``module:attribute`` paths: task families and policies.

`import_target` imports such a path (a top-level module not on ``sys.path`` is also looked for
in the working directory); `import_root` says which directory must be on ``sys.path`` to
import it again, so a run records it and `add_import_root` makes it importable later, from
any directory. `target_of` names an object given from Python (a class or function defined at
the top level of a module, or of the script being run) by such a path.

Imports nothing heavy (the configuration layer uses it).
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Any


class ImportTargetError(ValueError):
    """A ``module:attribute`` path that cannot be imported; the message is one line."""


def import_module(name: str) -> Any:
    """Import a module; a top-level module not on sys.path is also looked for in the current
    directory (console scripts do not put it on sys.path, `python -m` does)."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        cwd = os.getcwd()
        if error.name != name.split(".")[0] or cwd in sys.path:
            raise
        sys.path.append(cwd)
        return importlib.import_module(name)


def import_target(target: str, what: str) -> Any:
    """The object at ``module:attribute`` (dots allowed in both); ImportTargetError naming
    `what` (e.g. "task family") when the path is malformed, the module fails to import or
    lacks the attribute."""
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise ImportTargetError(f"{what} path {target!r} must look like 'module:name'")
    try:
        module = import_module(module_name)
    except Exception as error:  # ImportError, or any error raised while importing the module
        raise ImportTargetError(
            f"cannot import {what} module '{module_name}': {type(error).__name__}: {error}"
        ) from error
    obj: Any = module
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise ImportTargetError(f"module '{module_name}' has no attribute '{attribute}'")
        obj = getattr(obj, part)
    return obj


def import_root(target: str) -> str | None:
    """The directory that must be on sys.path to import ``module:attribute`` again (where the
    module was found), or None for a module without a file."""
    module_name = target.partition(":")[0]
    module = sys.modules.get(module_name) or import_module(module_name)
    path = getattr(module, "__file__", None)
    if path is None:
        return None
    root = Path(path).resolve().parent
    if Path(path).name == "__init__.py":
        root = root.parent
    for _ in range(module_name.count(".")):
        root = root.parent
    return str(root)


def add_import_root(root: str | None) -> None:
    """Make a recorded `import_root` importable (appended to sys.path, if it still exists)."""
    if root and Path(root).is_dir() and root not in sys.path:
        sys.path.append(root)


def target_of(obj: Any, what: str) -> str:
    """``module:qualname`` of a class or function, checked to import back to it; one defined
    in the script being run (``__main__``) is named by the script's module (its file name),
    which is importable from the script's directory. ImportTargetError for lambdas, nested
    definitions and objects without a module."""
    module_name = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not module_name or not qualname or "<" in qualname:
        raise ImportTargetError(
            f"{what} {obj!r} must be a class or function defined at the top level of a module, "
            "so that the run can rebuild it (or give it as 'module:name')"
        )
    if module_name == "__main__":
        main_file = getattr(sys.modules["__main__"], "__file__", None)
        if main_file is None:
            raise ImportTargetError(
                f"{what} {qualname} is defined in an interactive session; define it in a "
                "module (a .py file) so that the run can rebuild it"
            )
        module_name = Path(main_file).stem
        folder = str(Path(main_file).resolve().parent)
        if folder not in sys.path:
            sys.path.append(folder)
    target = f"{module_name}:{qualname}"
    if module_name != getattr(obj, "__module__", None):
        return target  # the script's module: importing it again would run it a second time
    if import_target(target, what) is not obj:
        raise ImportTargetError(f"{what} {target} does not import back to {obj!r}")
    return target
