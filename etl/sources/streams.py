"""A derived stream's source: the frames other streams publish, read by sequence number.

``stream://cpu`` reads the frames of stream ``cpu``; ``stream://cpu,mem`` those of two
streams (for a join). The cursor's ``offset`` holds the sequence numbers consumed (two
packed into one number for two inputs), so the loop checkpoints and replays a derived
stream exactly as it does a file: a tick replayed after a crash reads the same frames,
up to the same numbers, from the cluster's ring. Each read returns the frames published
since the last one, pickled; :class:`FramesParser` turns them into rows, with a column
``input`` naming the stream each came from.

A derived stream runs as a task of its own, named for it (``tick-<name>-…``). Frames that
left the ring before the derived stream read them (it fell more than a ring behind) are
reported as a reset of the source and skipped.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable, Sequence

import pandas as pd

from headrace.etl.contract import heads, read_many
from headrace.etl.contract.frames import empty_frame
from headrace.etl.parse.parser import Parsed
from headrace.etl.sources.base import Chunk, Cursor, SourceError

SCHEME = "stream://"
_BITS = 32  # a packed sequence number: 4 billion frames a stream


def parse_inputs(url: str) -> list[str]:
    names = [n.strip() for n in url[len(SCHEME) :].split(",")]
    if not 1 <= len(names) <= 2 or not all(names):
        raise ValueError(f"{url!r}: name one stream (stream://cpu) or two (stream://cpu,mem)")
    if len(set(names)) != len(names):
        raise ValueError(f"{url!r}: the same stream twice")
    return names


def pack(seqs: Sequence[int]) -> int:
    return seqs[0] if len(seqs) == 1 else (seqs[0] << _BITS) | seqs[1]


def unpack(offset: int, n: int) -> list[int]:
    return [offset] if n == 1 else [offset >> _BITS, offset & ((1 << _BITS) - 1)]


class StreamsSource:
    """The published frames of one or two streams (``inputs``)."""

    def __init__(self, inputs: Sequence[str], stream: str = "") -> None:
        self.inputs = list(inputs)
        self.display = SCHEME + ",".join(self.inputs)
        self.server = SCHEME + (stream or "+".join(self.inputs))  # its own task, by name

    def __repr__(self) -> str:
        return f"StreamsSource({self.inputs!r})"

    def named(self, stream: str) -> StreamsSource:
        """This source for the derived stream ``stream`` (its task takes the name)."""
        return StreamsSource(self.inputs, stream)

    def read(self, cursor: Cursor, limit: int | None = None) -> Chunk:
        from distributed import get_client

        after = unpack(cursor.offset, len(self.inputs))
        client = get_client()
        if limit is not None:  # a replay: exactly the frames the crashed tick read
            until = unpack(limit, len(self.inputs))
        else:
            published = client.sync(heads, client)
            until = [published[n].seq if n in published else 0 for n in self.inputs]
        until = [max(u, a) for u, a in zip(until, after, strict=True)]
        ranges = {n: (a, u) for n, a, u in zip(self.inputs, after, until, strict=True) if u > a}
        if not ranges:
            return Chunk(b"", cursor.line + 1, cursor, 0, None, self.display)
        got = client.sync(read_many, client, ranges)
        parts, missing = [], []
        for name, (a, u) in ranges.items():
            frames = got.get(name, [])
            seqs = [s for s, _ in frames]
            if seqs != list(range(a + 1, u + 1)):
                missing.append(f"{name} {a + 1}..{u} ({len(seqs)} of {u - a} read)")
            parts += [(name, seq, frame) for seq, frame in frames]
        if missing and limit is not None:
            raise SourceError(f"{self.display}: frames to replay left the ring: {missing}")
        reset = f"frames gone from the ring: {', '.join(missing)}" if missing else None
        moved = Cursor(offset=pack(until), line=cursor.line + len(parts))
        data = pickle.dumps(parts, protocol=pickle.HIGHEST_PROTOCOL) if parts else b""
        return Chunk(data, cursor.line + 1, moved, len(ranges), reset, self.display)

    def close(self) -> None:
        pass


class FramesParser:
    """Rows of the frames a :class:`StreamsSource` read, with an ``input`` column."""

    def __repr__(self) -> str:
        return "FramesParser()"

    def parse(self, data: bytes, first_line: int = 1, source: str = "") -> Parsed:
        parts = pickle.loads(data)
        frames = [frame.assign(input=name) for name, _, frame in parts]
        frame = pd.concat(frames, ignore_index=True) if frames else empty_frame()
        return Parsed(frame=frame, lines=len(frame), malformed=0)


class InputError(ValueError):
    """A derived stream's inputs are not streams of the loop, or form a cycle."""

    def __init__(self, stream: str, problem: str) -> None:
        super().__init__(f"stream {stream!r}: {problem}")
        self.stream, self.problem = stream, problem


def check_inputs(streams: Iterable[object]) -> None:
    """:class:`InputError` naming the stream whose inputs are not streams here, or form
    a cycle."""
    inputs = {
        s.name: s.source.inputs  # type: ignore[attr-defined]
        for s in streams
        if isinstance(getattr(s, "source", None), StreamsSource)
    }
    streams = list(streams)
    names = {s.name for s in streams}  # type: ignore[attr-defined]
    early = {
        s.name  # type: ignore[attr-defined]
        for s in streams
        if getattr(getattr(s, "transform", None), "emit", "final") == "early"
    }
    for name, used in inputs.items():
        unknown = [u for u in used if u not in names]
        if unknown:
            raise InputError(name, f"input {unknown[0]!r} is not a stream of this loop")
        revised = [u for u in used if u in early]
        if revised:
            # Its windows would take a revised row as one more row: counted twice.
            raise InputError(
                name,
                f"input {revised[0]!r} emits early (revisions of its rows); a derived "
                "stream reads final rows: give it emit: final",
            )
    done: set[str] = set()

    def cycle(at: str, path: list[str]) -> list[str] | None:
        if at in path:
            return [*path[path.index(at) :], at]
        if at not in inputs or at in done:
            return None
        for used in inputs[at]:
            found = cycle(used, [*path, at])
            if found:
                return found
        done.add(at)
        return None

    for name in inputs:
        found = cycle(name, [])
        if found:
            raise InputError(name, f"its inputs form a cycle: {' -> '.join(found)}")
