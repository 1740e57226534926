"""Many streams' lines in one parse: what a task of many streams with one parser does.

Arrow's CSV reader costs about 0.3 ms a call whatever it reads, which was most of a tick's
parse of a stream's few lines. Streams whose parsers parse alike (:func:`key`) have their
chunks read in one call, then cut into each stream's rows. Only when every line of every
chunk is clean: one line the fast path rejects, and the chunks are tried in halves, down
to the chunk that holds it, which is parsed alone, exactly as :meth:`RegexParser.parse`
parses it. So a stream's result never depends on its neighbours.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from headrace.etl import pandas_internals as internals
from headrace.etl.parse import convert
from headrace.etl.parse.lines import prepared
from headrace.etl.parse.parser import Parsed
from headrace.etl.parse.regex import RegexParser

Chunk = tuple[bytes, int, str]  # data (complete lines), first line's number, source


def key(parser: object) -> Hashable | None:
    """Equal for parsers that parse alike; None for one that parses only alone."""
    if type(parser) is not RegexParser or not parser.use_csv:
        return None
    return (parser.pattern, parser.time_format, parser.keep, parser.max_future)


def parse_together(parser: RegexParser, chunks: Sequence[Chunk]) -> list[Parsed]:
    """``parser.parse`` of each chunk, in one CSV read when every line is clean.

    Otherwise each half is tried on its own, down to single chunks, which parse alone:
    a stream with a malformed line costs a few more reads, not one read per stream.
    """
    datas = [prepared(data, first) for data, first, _ in chunks]  # once, for every half
    return _halves(parser, chunks, datas, convert.latest_ns(parser.max_future))


def _halves(
    parser: RegexParser, chunks: Sequence[Chunk], datas: list[bytes], latest: int
) -> list[Parsed]:
    if len(chunks) == 1:
        return [parser.parse(*chunks[0])]
    if sum(len(d) for d in datas) <= parser.PIECE and all(d.endswith(b"\n") for d in datas):
        joined = b"".join(datas)
        part = parser._parse_csv(joined, 0, len(joined), latest)
        if part is not None:  # every line a row
            # The columns made once and cut: made for each stream, they cost more than
            # the rest of its parse.
            columns = convert.columns(parser._typed([part.table]))
            out, at = [], 0
            for d in datas:
                n = d.count(b"\n")
                rows = internals.frame({k: v[at : at + n] for k, v in columns.items()})
                out.append(Parsed(frame=rows, lines=n, malformed=0, samples=[], blank=0))
                at += n
            return out
    half = len(chunks) // 2
    return _halves(parser, chunks[:half], datas[:half], latest) + _halves(
        parser, chunks[half:], datas[half:], latest
    )
