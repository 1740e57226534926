"""What runs on Dask workers each tick: extract, then parse and transform.

Functions here are submitted as tasks; they take and return plain picklable
objects, hold no state of their own (the connection pool lives in
``sources``), and never raise for bad data: malformed lines are counted and
sampled, not fatal.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from .parsing import Malformed, Parsed, RegexParser
from .sources import Chunk, Cursor, Source, SourceError
from .transforms import Step, empty_frame

Parser = Callable[..., Parsed]
Transform = Callable[[pd.DataFrame, Any], Step]


def extract(source: Source, cursor: Cursor, limit: int | None = None) -> Chunk:
    """Read the complete lines after ``cursor`` (up to byte ``limit`` when replaying a tick)."""
    try:
        return source.read(cursor, limit=limit)
    except SourceError as exc:
        # Returned, not raised: an unreachable source is the loop's to report, once per change
        # of state; a raised error would also be logged by the worker on every tick.
        return Chunk(b"", cursor.line + 1, cursor, 0, None, source.display, error=str(exc))


@dataclass
class Summary:
    """Everything about a tick but the frame: small, goes back to the loop."""

    cursor: Cursor  # where the next tick reads from
    nbytes: int  # bytes of complete lines extracted
    transfers: int
    reset: str | None
    error: str | None = None  # the source could not be read
    rows: int = 0
    first: int = 0  # ns of the first row's time, 0 if no rows
    last: int = 0
    lines: int = 0
    malformed: int = 0
    samples: list[Malformed] = field(default_factory=list)
    late: int = 0
    carried: int = 0
    carry: Any = None


@dataclass
class Result:
    frame: pd.DataFrame
    summary: Summary


def take_lines(fn: Callable[[list[str]], pd.DataFrame]) -> Callable[[bytes], pd.DataFrame]:
    """Adapt a parser written for a list of text lines to the bytes the sources produce."""

    def parse(data: bytes) -> pd.DataFrame:
        return fn(data.decode("utf-8", errors="replace").splitlines())

    parse.__name__ = getattr(fn, "__name__", "parse")
    return parse


def run_parser(parser: Any, chunk: Chunk) -> Parsed:
    """Run the stream's parser; a user parser that raises marks its chunk malformed."""
    if isinstance(parser, RegexParser):
        return parser(chunk.data, first_line=chunk.first_line, source=chunk.source)
    lines = chunk.data.count(b"\n")
    try:
        frame = parser(chunk.data)
    except Exception as exc:  # the user's code: report it with its place, keep the loop alive
        text = chunk.data[:200].decode("utf-8", errors="replace")
        reason = f"parser {getattr(parser, '__name__', parser)!r} raised {exc!r}"
        sample = Malformed(line=chunk.first_line, reason=reason, text=text, source=chunk.source)
        return Parsed(frame=empty_frame(), lines=lines, malformed=lines, samples=[sample])
    return Parsed(frame=frame, lines=lines, malformed=0, samples=[])


def transform(chunk: Chunk, parser: Any, transform: Transform, carry: Any) -> Result:
    """Parse the chunk's complete lines and apply the stream's transform.

    Without new lines there is nothing to parse or transform: the task returns at once
    with the carry untouched, so the loop can go on to the next tick in one round trip.
    """
    summary = Summary(chunk.cursor, len(chunk.data), chunk.transfers, chunk.reset, chunk.error)
    if not chunk.data:
        summary.carry = carry
        return Result(empty_frame(), summary)
    parsed = run_parser(parser, chunk)
    step = transform(parsed.frame, carry)
    frame = step.frame
    if len(frame):
        times = frame["time"].to_numpy(dtype="datetime64[ns]").view("int64")
        summary.rows, summary.first, summary.last = len(frame), int(times[0]), int(times[-1])
    summary.lines, summary.malformed = parsed.lines, parsed.malformed
    summary.samples = parsed.samples
    summary.late, summary.carried, summary.carry = step.late, step.carried, step.carry
    return Result(frame, summary)
