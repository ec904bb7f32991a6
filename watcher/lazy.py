"""Package names resolved on first use (PEP 562): `spendwatch --help` and light commands skip heavy imports."""

from __future__ import annotations

import importlib
from typing import Callable


def lazy_names(package: str, where: dict[str, str]) -> Callable[[str], object]:
    """A module `__getattr__` that imports `package.<where[name]>` when `name` is first asked for."""

    def __getattr__(name: str) -> object:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{where[name]}"), name)

    return __getattr__
