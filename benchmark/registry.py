"""The three registries of SegKD-Bench: datasets, models and methods.

One strict generic type (after lm-evaluation-harness): registering a name twice raises, and asking for
an unknown name raises with the closest known names. Entries live next to their code and register
themselves on import; :func:`load_all` imports every module of the packages that hold them, so adding
a dataset, model or method is one new file.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """``"; did you mean 'kd'?"`` for a near miss among ``known`` (``""`` when nothing is close): the same name in
    another case first (``KD`` for ``kd``), then difflib's closest matches, compared case-insensitively."""
    known = [str(k) for k in known]
    same_but_case = [k for k in known if k.lower() == str(name).lower() and k != name]
    lowered: dict[str, str] = {}
    for k in known:
        lowered.setdefault(k.lower(), k)
    close = [lowered[c] for c in difflib.get_close_matches(str(name).lower(), list(lowered), n=3, cutoff=0.5)]
    matches = list(dict.fromkeys(same_but_case + [c for c in close if c != name]))[:3]
    return f"; did you mean {', '.join(repr(c) for c in matches)}?" if matches else ""


class UnknownNameError(KeyError):
    """A name that no entry of a registry carries."""

    def __init__(self, kind: str, name: str, known: list[str]):
        self.kind, self.name, self.known = kind, name, known
        super().__init__(f"unknown {kind} {name!r}{did_you_mean(name, known)} (known: {', '.join(known) or 'none'})")

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.args[0]


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice: {self._entries[name]!r} and {entry!r}")
            self._entries[name] = entry
            return entry

        return decorator

    def get(self, name: str) -> T:
        load_all()
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, self.names()) from None

    def names(self) -> list[str]:
        load_all()
        return sorted(self._entries)

    def items(self) -> Iterator[tuple[str, T]]:
        for name in self.names():
            yield name, self._entries[name]

    def __contains__(self, name: object) -> bool:
        load_all()
        return name in self._entries


DATASETS: Registry = Registry("dataset")
MODELS: Registry = Registry("model")
METHODS: Registry = Registry("method")

_PACKAGES = ("benchmark.data", "benchmark.models", "methods")
_loaded = False


def load_all() -> None:
    """Import every module of the packages that register entries (once)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for package_name in _PACKAGES:
        package = importlib.import_module(package_name)
        for info in pkgutil.iter_modules(package.__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{package_name}.{info.name}")
