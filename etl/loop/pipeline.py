"""What runs on Dask workers each tick: extract, then parse and transform, for many streams.

Functions here are submitted as tasks; they take and return plain picklable
objects, hold no state of their own (the FTP connection pool lives in
``headrace.etl.sources.ftp``), and never raise for bad data: malformed lines are counted and
sampled, not fatal.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from headrace.etl.contract import Span
from headrace.etl.contract.frames import empty_frame
from headrace.etl.parse.parser import Malformed, Parser
from headrace.etl.sources.base import Chunk, Cursor, Source, SourceError
from headrace.etl.transforms import Transform
from headrace.etl.windows.late import late_letters


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
    span: Span = field(default_factory=lambda: Span(0, 0, 0))  # the frame's rows
    lines: int = 0  # non-blank lines
    blank: int = 0  # whitespace-only lines, skipped
    malformed: int = 0
    samples: list[Malformed] = field(default_factory=list)
    late: int = 0
    late_letters: list[Malformed] = field(default_factory=list)  # late rows, reason "late"
    carried: int = 0
    carry: Any = None  # the transform's carry, opaque to the loop
    seconds: float = 0.0  # the stream's part of its task (extract and transform), wall clock


@dataclass
class Result:
    frame: pd.DataFrame
    summary: Summary


def transform(chunk: Chunk, parser: Parser, transform: Transform, carry: Any) -> Result:
    """Parse the chunk's complete lines and apply the stream's transform.

    Without new lines there is nothing to parse or transform: the task returns at once
    with the carry untouched, so the loop can go on to the next tick in one round trip,
    unless the transform closes idle windows (``ticks_when_idle``).
    """
    summary = Summary(chunk.cursor, len(chunk.data), chunk.transfers, chunk.reset, chunk.error)
    if not chunk.data and not getattr(transform, "ticks_when_idle", False):
        summary.carry = carry
        return Result(empty_frame(), summary)
    parsed = parser.parse(chunk.data, first_line=chunk.first_line, source=chunk.source)
    step = transform.step(parsed.frame, carry)
    frame = step.frame
    summary.span = Span.of(frame)
    summary.lines, summary.blank, summary.malformed = parsed.lines, parsed.blank, parsed.malformed
    summary.samples = parsed.samples
    summary.late, summary.carried, summary.carry = step.late, step.carried, step.carry
    if len(step.late_rows):
        summary.late_letters = late_letters(
            chunk.data,
            chunk.first_line,
            chunk.source,
            parser,
            parsed,
            step.late_rows,
            step.lateness,
        )
    return Result(frame, summary)


@dataclass
class Work:
    """One stream's part of a tick: where to read, how to parse and transform, its carry."""

    stream: str
    source: Source
    cursor: Cursor
    limit: int | None  # the byte a replayed tick ends at
    parser: Parser
    transform: Transform
    carry: Any


def tick(works: list[Work]) -> list[Result]:
    """Extract and transform each stream's chunk, in order: one task for many streams.

    The loop gives a task the streams of one server (their reads share a connection).
    A stream whose parse or transform raises gets its error in its summary, as one whose
    source cannot be read does: it fails alone, and the others' results come back.
    """
    results = []
    for work in works:
        began = time.perf_counter()
        try:
            chunk = extract(work.source, work.cursor, work.limit)
            result = transform(chunk, work.parser, work.transform, work.carry)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            result = Result(empty_frame(), Summary(work.cursor, 0, 0, None, error=error))
        result.summary.seconds = time.perf_counter() - began
        results.append(result)
    return results
