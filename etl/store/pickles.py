"""Pickles the loop keeps (carries, backlog frames), readable across headrace's renames.

A stream's carry travels as :class:`Pickled`: the worker pickles it once, and the loop
passes those bytes to the state store and to the next tick without reading them (it
pickled each carry three times a tick before: two commits and the next work).

State directories written before headrace was one package (0.1) name their classes by
the old top-level modules (``etl.transforms.Carry``); a carry a user's transform keeps
may name anything. Loading maps the old module names to where those modules are now, so
such a directory loads and continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import io
import pickle
from typing import Any, TypeVar

T = TypeVar("T")

# Modules of 0.1 that moved when etl/ became headrace.etl and grew sub-packages.
_MOVED = {
    "etl.convert": "headrace.etl.parse.convert",
    "etl.lines": "headrace.etl.parse.lines",
    "etl.patterns": "headrace.etl.parse.patterns",
    "etl.parser": "headrace.etl.parse.parser",
    "etl.regexparser": "headrace.etl.parse.regex",
    "etl.ftp": "headrace.etl.sources.ftp",
    "etl.ftpauth": "headrace.etl.sources.credentials",
    "etl.ftptls": "headrace.etl.sources.ftps",
    "etl.rotation": "headrace.etl.sources.rotation",
    "etl.sources": "headrace.etl.sources.base",
    "etl.loop": "headrace.etl.loop.runner",
    "etl.pipeline": "headrace.etl.loop.pipeline",
    "etl.metrics": "headrace.etl.loop.metrics",
    "etl.state": "headrace.etl.store.state",
    "etl.deadletter": "headrace.etl.store.deadletter",
    "etl.sink": "headrace.etl.store.sink",
}
# Classes that left a module which stayed: (old module, name) -> new module.
_SPLIT = {
    ("etl.sources", "FileSource"): "headrace.etl.sources.local",
}


def current_module(module: str, name: str) -> str:
    """Where ``module.name`` of an older headrace lives now (``module`` if not ours)."""
    if (module, name) in _SPLIT:
        return _SPLIT[(module, name)]
    if module in _MOVED:
        return _MOVED[module]
    if module == "etl" or module.startswith("etl."):
        return f"headrace.{module}"
    return module


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        return super().find_class(current_module(module, name), name)


def dumps(value: Any) -> bytes:
    return pickle.dumps(value, protocol=5)


def loads(data: bytes) -> Any:
    """``pickle.loads`` that also reads what headrace 0.1 wrote."""
    return _Unpickler(io.BytesIO(data)).load()


class Pickled:
    """A value kept as its pickle; pickling it again writes those bytes as they are.

    The state store keeps :attr:`data` itself, so a stored carry is the same pickle as
    when the loop held the carry (and loads as the carry).
    """

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    @classmethod
    def of(cls, value: Any) -> Pickled | None:
        """``value`` pickled (None stays None: nothing to carry)."""
        return None if value is None else cls(dumps(value))

    def value(self) -> Any:
        # Plain pickle: these bytes are always this headrace's own (Pickled.of), so the
        # renaming loader (~6 µs more a carry, at every tick on the worker) has nothing
        # to map; a stored carry of an older headrace is read by StateStore.load.
        return pickle.loads(self.data)

    def __reduce__(self) -> tuple:
        return Pickled, (self.data,)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pickled) and other.data == self.data

    def __hash__(self) -> int:
        return hash(self.data)

    def __repr__(self) -> str:
        return f"Pickled({len(self.data)} bytes)"


def value(kept: Any) -> Any:
    """``kept`` itself, or the value a :class:`Pickled` holds."""
    return kept.value() if isinstance(kept, Pickled) else kept


def stored(kept: Any) -> bytes:
    """The pickle of ``kept`` to store: a :class:`Pickled`'s own bytes."""
    return kept.data if isinstance(kept, Pickled) else dumps(kept)


def by_fields(cls: type[T]) -> type[T]:
    """Pickle the dataclass ``cls`` as its class and the tuple of its fields.

    A dataclass pickles as its ``__dict__`` by default: each field's name goes with it,
    and reading it back sets them one by one. Each stream-tick sends a cursor to the
    worker and a summary back; read by position, a summary unpickles in half the time.
    """
    names = tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]

    def __reduce__(self: Any) -> tuple:
        return cls, tuple(getattr(self, n) for n in names)

    cls.__reduce__ = __reduce__  # type: ignore[method-assign]
    return cls
