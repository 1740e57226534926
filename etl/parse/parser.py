"""What a parser is: the :class:`Parser` protocol, what it returns, and plain functions as parsers.

A parser turns the complete lines of one tick's chunk into rows of the contract's frame
schema (``time``, ``value``, optionally ``key``). It runs on a Dask worker, so it is
shipped by pickling and holds no state between ticks; a line it cannot parse is
counted and sampled in :class:`Parsed`, never raised, so one bad line costs only itself.

:class:`headrace.etl.parse.regex.RegexParser` is the built-in one; :class:`FunctionParser` (or
:func:`take_lines`) makes one of a plain function.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import pandas as pd

from headrace.etl.contract.frames import conform, empty_frame

__all__ = ["FunctionParser", "Malformed", "Parsed", "Parser", "take_lines"]

_TEXT_MAX = 200  # characters of a chunk quoted when a user's parser fails on it


@dataclass(frozen=True)
class Malformed:
    """One line that did not parse, kept as a sample for logs and dead letters."""

    line: int
    reason: str
    text: str
    source: str = ""

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.reason}: {self.text!r}"


@dataclass
class Parsed:
    """Result of parsing one block of lines; ``len(frame) + malformed == lines``.

    ``blank`` lines (whitespace only) are not in ``lines``: they hold nothing to count
    as a row or to report, but they are numbered, so the block's lines are
    ``lines + blank``.
    """

    frame: pd.DataFrame
    lines: int
    malformed: int
    samples: list[Malformed] = field(default_factory=list)
    blank: int = 0


@runtime_checkable
class Parser(Protocol):
    """Complete lines (``data`` ends with a newline) -> :class:`Parsed`.

    ``first_line`` is the 1-based line number of the first line in the source and
    ``source`` its display name: both are for naming malformed lines' places.
    """

    def parse(self, data: bytes, first_line: int = 1, source: str = "") -> Parsed: ...


class FunctionParser:
    """A function ``bytes -> DataFrame`` as a :class:`Parser`.

    The function sees the whole chunk, so it cannot report single lines: if it raises,
    or returns what the contract cannot hold (no ``time`` or ``value`` column, times or
    values that do not convert), the chunk's lines count as malformed, with the error
    and the chunk's place as reason. Rows it returns without a time (NaT) are dropped
    and counted as malformed: no period can hold them.
    """

    def __init__(self, fn: Callable[[bytes], pd.DataFrame]) -> None:
        self.fn = fn
        self.__name__ = getattr(fn, "__name__", type(fn).__name__)

    def __repr__(self) -> str:
        return f"FunctionParser({self.fn!r})"

    def parse(self, data: bytes, first_line: int = 1, source: str = "") -> Parsed:
        lines = data.count(b"\n")
        who = f"parser {self.__name__!r}"
        text = data[:_TEXT_MAX].decode("utf-8", errors="replace")
        try:
            frame = self.fn(data)
        except Exception as exc:  # the user's code: report it with its place, keep the loop alive
            sample = Malformed(first_line, f"{who} raised {exc!r}", text, source)
            return Parsed(frame=empty_frame(), lines=lines, malformed=lines, samples=[sample])
        try:
            frame = conform(frame, who)
        except (TypeError, ValueError) as exc:  # else the transform would fail every retry
            sample = Malformed(first_line, str(exc), text, source)
            return Parsed(frame=empty_frame(), lines=lines, malformed=lines, samples=[sample])
        untimed = frame["time"].isna().to_numpy()
        if not untimed.any():
            return Parsed(frame=frame, lines=lines, malformed=0)
        n = int(untimed.sum())
        rows = f"{n} row" + "s" * (n != 1)
        sample = Malformed(first_line, f"{who} returned {rows} without a time", text, source)
        frame = frame[~untimed].reset_index(drop=True)
        return Parsed(frame=frame, lines=lines, malformed=n, samples=[sample])


class _Decoded:
    """``fn(lines)`` of the UTF-8 text lines of the data (a class: it pickles by reference)."""

    def __init__(self, fn: Callable[[list[str]], pd.DataFrame]) -> None:
        self.fn = fn
        self.__name__ = getattr(fn, "__name__", "parse")

    def __call__(self, data: bytes) -> pd.DataFrame:
        return self.fn(data.decode("utf-8", errors="replace").splitlines())


def take_lines(fn: Callable[[list[str]], pd.DataFrame]) -> FunctionParser:
    """A parser of a function written for a list of text lines."""
    return FunctionParser(_Decoded(fn))
