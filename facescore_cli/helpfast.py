"""typer's rich help without importing what our help never uses.

typer.rich_utils imports `rich.markdown` (markdown-it and its plugins) and `rich.traceback`
(rich.pretty, which imports attrs) at its top: ~0.09 s of a 0.23 s `--help` on our 2-core
machine. Our help is written in rich markup, never Markdown, and help never shows a traceback.

`install()` puts a finder in front of the import system that catches the import of
typer.rich_utils only: while that one module runs, `rich.markdown.Markdown` and
`rich.traceback.Traceback` are stand-in classes that import the real module on first use (a call
or an attribute), then the stand-in modules leave `sys.modules`, so any later
`import rich.traceback` gets the real one. Nothing changes in what typer prints.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
from typing import Any

TARGET = "typer.rich_utils"
DEFERRED = {"rich.markdown": "Markdown", "rich.traceback": "Traceback"}


class _Deferred(type):
    """Metaclass of a stand-in: calling it or reading an attribute imports the real class."""

    def _real(cls) -> Any:
        return getattr(importlib.import_module(cls._module), cls.__name__)

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        return cls._real()(*args, **kwargs)

    def __getattr__(cls, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(cls._real(), name)

    def __instancecheck__(cls, obj: Any) -> bool:
        module = sys.modules.get(cls._module)
        return module is not None and not getattr(module, "_facescore_stand_in", False) and isinstance(obj, cls._real())


def stand_in(module: str, name: str) -> type:
    """A class named `name` that stands for `module.name` until it is used."""
    return _Deferred(name, (), {"_module": module})


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != TARGET:
            return None
        sys.meta_path.remove(self)  # once: find the real spec, then wrap its loader
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        real_exec = spec.loader.exec_module

        def exec_module(module: types.ModuleType) -> None:
            placed = []
            for mod_name, cls_name in DEFERRED.items():
                if mod_name in sys.modules:  # already imported for real: nothing to save
                    continue
                fake = types.ModuleType(mod_name)
                fake._facescore_stand_in = True  # type: ignore[attr-defined]
                setattr(fake, cls_name, stand_in(mod_name, cls_name))
                sys.modules[mod_name] = fake
                placed.append(mod_name)
            try:
                real_exec(module)
            finally:
                for mod_name in placed:
                    if getattr(sys.modules.get(mod_name), "_facescore_stand_in", False):
                        del sys.modules[mod_name]
                    parent = sys.modules.get("rich")
                    child = mod_name.rpartition(".")[2]
                    if parent is not None and getattr(getattr(parent, child, None), "_facescore_stand_in", False):
                        delattr(parent, child)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def install() -> None:
    """Defer rich.markdown and rich.traceback for typer.rich_utils, if it is not imported yet."""
    if TARGET in sys.modules or any(isinstance(f, _Finder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _Finder())
