"""What runs on Dask workers each tick: extract, then parse and transform, for many streams.

Functions here are submitted as tasks; they take and return plain picklable
objects, hold no state of their own (the FTP connection pool lives in
``headrace.etl.sources.ftp``), and never raise for bad data: malformed lines are counted and
sampled, not fatal.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from distributed.protocol import Serialized, deserialize, pickle

from headrace.etl import pandas_internals as internals
from headrace.etl.contract import Span
from headrace.etl.contract.frames import empty_frame
from headrace.etl.parse import together
from headrace.etl.parse.parser import Malformed, Parsed, Parser
from headrace.etl.sources.base import Chunk, Cursor, Source, SourceError
from headrace.etl.store import pickles
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


@pickles.by_fields
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
    carry: Any = None  # the transform's carry, pickled: opaque to the loop
    seconds: float = 0.0  # the stream's part of its task (extract and transform), wall clock


class Result:
    """A stream's part of a tick: its frame and :class:`Summary`.

    Pickled (from the worker to the loop) with its frame serialized as Dask sends data,
    once, on the worker: the loop publishes it as it is (:meth:`wire`) and deserializes
    it only to read it (a stream with history). Unpickling and pickling each frame again
    was a fifth of the loop's time with hundreds of streams.
    """

    def __init__(self, frame: pd.DataFrame, summary: Summary) -> None:
        self._frame: pd.DataFrame | None = frame
        self._wire: Serialized | None = None
        self.summary = summary

    @property
    def frame(self) -> pd.DataFrame:
        if self._frame is None:
            assert self._wire is not None
            self._frame = deserialize(self._wire.header, self._wire.frames)
        return self._frame

    def wire(self) -> Serialized:
        """The frame serialized as :meth:`distributed.Client.publish_dataset` sends it, by
        Dask's "pickle" serializer, with the arrays in the pickle: one frame on the wire
        for the scheduler to keep and every reader to fetch, not one per array (a tick's
        frames hold a few rows; 20 % less time to make and to read than out of band), its
        numeric and time columns as their bytes (:class:`.pandas_internals.Compact`)."""
        if self._wire is None:
            pickled = pickle.dumps(internals.Compact(self._frame), protocol=5)
            self._wire = Serialized({"serializer": "pickle", "writeable": ()}, [pickled])
        return self._wire

    def __reduce__(self) -> tuple:
        return _received, (self.wire(), self.summary)


def _received(wire: Serialized, summary: Summary) -> Result:
    result = Result(None, summary)  # type: ignore[arg-type]  # deserialized when read
    result._wire = wire
    return result


def transform(
    chunk: Chunk, parser: Parser, transform: Transform, carry: Any, parsed: Parsed | None = None
) -> Result:
    """Parse the chunk's complete lines (unless ``parsed`` already) and apply the transform.

    ``carry`` may be :class:`~headrace.etl.store.pickles.Pickled`; the summary's is. Without
    new lines there is nothing to parse or transform: the task returns at once with the
    carry untouched, so the loop can go on to the next tick in one round trip,
    unless the transform closes idle windows (``ticks_when_idle``).
    """
    summary = Summary(chunk.cursor, len(chunk.data), chunk.transfers, chunk.reset, chunk.error)
    if not chunk.data and not getattr(transform, "ticks_when_idle", False):
        summary.carry = carry
        return Result(empty_frame(), summary)
    if parsed is None:
        parsed = parser.parse(chunk.data, first_line=chunk.first_line, source=chunk.source)
    step = transform.step(parsed.frame, pickles.value(carry))
    frame = step.frame
    known = internals.span(frame)
    summary.span = Span(*known) if known is not None else Span.of(frame)
    summary.lines, summary.blank, summary.malformed = parsed.lines, parsed.blank, parsed.malformed
    summary.samples = parsed.samples
    summary.late, summary.carried = step.late, step.carried
    summary.carry = pickles.Pickled.of(step.carry)  # the loop keeps it as it is
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
    recipe: bytes = b""  # source, parser and transform as :func:`recipe` pickled them

    def __reduce__(self) -> tuple:
        if not self.recipe:
            return Work, (self.stream, self.source, self.cursor, self.limit, self.parser,
                          self.transform, self.carry)  # fmt: skip
        return _cooked, (self.stream, self.recipe, self.cursor, self.limit, self.carry)


def recipe(source: Source, parser: Parser, transform: Transform) -> bytes:
    """A stream's source, parser and transform pickled once, for every :class:`Work` of it.

    They do not change between ticks, and pickling them for each tick (~30 µs a stream)
    and unpickling them on the worker (~24 µs) was a tenth of a stream-tick. A worker
    unpickles a recipe once and keeps what it holds (:func:`_parts`), so a stream's
    objects live on across its ticks there; they hold no state of a tick (the carry does).
    """
    return pickle.dumps((source, parser, transform))


@functools.lru_cache(maxsize=4096)
def _parts(recipe: bytes) -> tuple[Source, Parser, Transform]:
    return pickle.loads(recipe)


def _cooked(stream: str, recipe: bytes, cursor: Cursor, limit: int | None, carry: Any) -> Work:
    source, parser, transform = _parts(recipe)
    return Work(stream, source, cursor, limit, parser, transform, carry, recipe)


def pack(works: list[Work]) -> bytes:
    """``works`` pickled by the loop, for :func:`tick`: the scheduler passes bytes on as they
    are, where it would unpickle every stream's source, parser and transform and pickle
    them again for the worker (a sixth of its time with hundreds of streams)."""
    return pickle.dumps(works)


def tick(works: list[Work] | bytes) -> list[Result]:
    """Extract and transform each stream's chunk, in order: one task for many streams.

    The loop gives a task the streams of one server (their reads share a connection).
    Streams whose parsers parse alike have their lines parsed in one call
    (:mod:`headrace.etl.parse.together`). A stream whose parse or transform raises gets
    its error in its summary, as one whose source cannot be read does: it fails alone,
    and the others' results come back.
    """
    if isinstance(works, bytes):
        works = pickle.loads(works)
    chunks: list[Chunk | Exception] = []
    seconds = []
    for work in works:
        began = time.perf_counter()
        try:
            chunks.append(extract(work.source, work.cursor, work.limit))
        except Exception as exc:
            chunks.append(exc)
        seconds.append(time.perf_counter() - began)
    parsed = _parse_together(works, chunks, seconds)
    results = []
    for i, (work, chunk) in enumerate(zip(works, chunks, strict=True)):
        began = time.perf_counter()
        try:
            if isinstance(chunk, Exception):
                raise chunk
            result = transform(chunk, work.parser, work.transform, work.carry, parsed.get(i))
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            result = Result(empty_frame(), Summary(work.cursor, 0, 0, None, error=error))
        result.summary.seconds = seconds[i] + time.perf_counter() - began
        results.append(result)
    return results


def tick_task(works: bytes) -> bytes:
    """What the loop submits: :func:`tick` of :func:`pack`'s works, its results pickled
    (read back with :func:`unpack_results`).

    A worker keeps a task's result until the loop has fetched it. Kept as bytes, it holds
    nothing Python's garbage collector tracks; kept as results (frames, summaries), each
    task's thousands of objects outlived two collections, reached the oldest generation,
    and brought on full collections of the whole worker every few ticks.
    """
    return pickle.dumps(tick(works), protocol=5)


def unpack_results(blob: bytes) -> list[Result]:
    """The results :func:`tick_task` pickled."""
    return pickle.loads(blob)


def _parse_together(
    works: list[Work], chunks: list[Chunk | Exception], seconds: list[float]
) -> dict[int, Parsed]:
    """The parses of the chunks whose parsers parse alike, by position; their cost shared."""
    groups: dict[Any, list[int]] = {}
    for i, (work, chunk) in enumerate(zip(works, chunks, strict=True)):
        if isinstance(chunk, Chunk) and chunk.data:
            k = together.key(work.parser)
            if k is not None:
                groups.setdefault(k, []).append(i)
    out: dict[int, Parsed] = {}
    for group in groups.values():
        if len(group) < 2:
            continue
        began = time.perf_counter()
        parser = works[group[0]].parser
        try:
            many = together.parse_together(
                parser, [(chunks[i].data, chunks[i].first_line, chunks[i].source) for i in group]
            )
        except Exception:  # each parses alone, and fails alone
            continue
        out.update(zip(group, many, strict=True))
        share = (time.perf_counter() - began) / len(group)
        for i in group:
            seconds[i] += share
    return out
