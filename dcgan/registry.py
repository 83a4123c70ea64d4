"""Parts registered by name: losses, augmentations, metrics and architectures.

A part is one module in its family's folder (dcgan/losses/, dcgan/augment/, dcgan/metrics/, dcgan/archs/)
that registers itself with a decorator:

    from . import REGISTRY

    @REGISTRY.register("hinge")
    class Hinge: ...

The family's `__init__.py` ends with `import_modules(__name__)`, which imports every module of the folder,
so adding a part is adding a file. The params that name parts (`loss`, `diffaugment`, `arch`) take their
allowed values from `Registry.names()`, and `dcgan.sources` counts every module of such a folder as run by
whoever imports the folder (their code is in the checkpoint fingerprint and in dvc.yaml's deps).
"""
from __future__ import annotations

import importlib
import pkgutil
import sys
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """name -> part, in the order of registration (modules are imported in name order)."""

    def __init__(self, family: str):
        self.family = family          # 'loss', 'augmentation', ...: used in error messages
        self._parts: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(part: T) -> T:
            if name in self._parts and self._parts[name] is not part:
                raise ValueError(f"two {self.family}s registered as '{name}'")
            self._parts[name] = part
            return part
        return add

    def get(self, name: str) -> T:
        """The part called `name`; a ValueError naming the choices otherwise."""
        try:
            return self._parts[name]
        except KeyError:
            raise ValueError(f"unknown {self.family} '{name}' (choose from {', '.join(self._parts)})") from None

    def names(self) -> tuple[str, ...]:
        return tuple(self._parts)

    def __contains__(self, name: object) -> bool:
        return name in self._parts

    def __iter__(self) -> Iterator[str]:
        return iter(self._parts)

    def items(self):
        return self._parts.items()


def import_modules(package: str) -> list[str]:
    """Import every module of `package` (a folder of parts), in name order; returns their names."""
    path = sys.modules[package].__path__
    names = sorted(m.name for m in pkgutil.iter_modules(path) if not m.name.startswith("_"))
    for name in names:
        importlib.import_module(f"{package}.{name}")
    return names
