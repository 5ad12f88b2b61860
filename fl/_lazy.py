"""Lazy submodule access for packages whose modules import torch (or Flower)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from types import ModuleType

__all__ = ["submodules"]


def submodules(
    package: str, names: Sequence[str]
) -> tuple[Callable[[str], ModuleType], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package`` that import ``names`` on first use."""
    known = frozenset(names)

    def getattr_(name: str) -> ModuleType:
        if name not in known:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return importlib.import_module(f"{package}.{name}")

    def dir_() -> list[str]:
        return sorted(known)

    return getattr_, dir_
