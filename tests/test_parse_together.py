"""Many streams' chunks parsed in one call (``headrace.etl.parse.together``) give each
stream exactly what parsing its chunk alone gives, malformed lines and all."""

from __future__ import annotations

import pandas as pd
import pytest
from test_corpus import CASES, KEYED, check_parsed, data_of, good

from headrace.etl.loop import pipeline
from headrace.etl.parse import together
from headrace.etl.parse.regex import RegexParser
from headrace.etl.sources.base import Cursor
from headrace.etl.sources.local import FileSource
from headrace.etl.store.pickles import value
from headrace.etl.transforms import Resample


def clean(start: float, n: int = 5) -> list:
    return [good(start + i * 25) for i in range(n)]


def counting(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of CSV reads, counted."""
    calls: list[int] = []
    read = RegexParser._parse_csv

    def counted(self, data, pos, end, latest):
        calls.append(end - pos)
        return read(self, data, pos, end, latest)

    monkeypatch.setattr(RegexParser, "_parse_csv", counted)
    return calls


def test_clean_chunks_are_read_once_and_cut_into_each_streams_rows(monkeypatch):
    calls = counting(monkeypatch)
    parser = RegexParser(keep=10**6)
    streams = [clean(1000 * i, n) for i, n in enumerate([5, 1, 8, 3])]
    # The first stream's chunk starts its file, with a byte order mark the parser drops.
    chunks = [(b"\xef\xbb\xbf" + data_of(streams[0]), 1, "a")]
    chunks += [(data_of(e), 40 + i, f"s{i}") for i, e in enumerate(streams[1:])]
    parsed = together.parse_together(parser, chunks)
    assert len(calls) == 1
    for got, entries, (_, first, _) in zip(parsed, streams, chunks, strict=True):
        check_parsed(got, entries, first)
    alone = [RegexParser(keep=10**6).parse(*c) for c in chunks]
    for a, b in zip(parsed, alone, strict=True):
        pd.testing.assert_frame_equal(a.frame, b.frame)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", CASES)
def test_a_stream_with_bad_lines_among_clean_ones_gets_what_it_would_alone(kind):
    parser = RegexParser(keep=10**6)
    entries = CASES[kind]
    streams = [clean(-5000), entries, clean(9000)]
    chunks = [(data_of(e), 1 + 100 * i, f"s{i}") for i, e in enumerate(streams)]
    parsed = together.parse_together(parser, chunks)
    for got, e, (_, first, _) in zip(parsed, streams, chunks, strict=True):
        check_parsed(got, e, first)


def test_parsers_parse_together_only_when_they_parse_alike():
    assert together.key(RegexParser()) == together.key(RegexParser())
    assert together.key(RegexParser()) != together.key(RegexParser(time_format="epoch"))
    assert together.key(RegexParser(KEYED)) != together.key(RegexParser())
    assert together.key(RegexParser(r"^(?P<time>\S+) x=(?P<value>\S+)$")) is None  # no CSV


def test_a_tick_of_streams_with_one_parser_equals_each_stream_alone(tmp_path, monkeypatch):
    """Through ``pipeline.tick``: frames, counts and carries as each stream's own tick."""
    calls = counting(monkeypatch)
    files = []
    for i, entries in enumerate([clean(0, 40), clean(0, 3) + CASES["bad times"], clean(0, 7)]):
        path = tmp_path / f"s{i}.log"
        path.write_bytes(data_of(entries))
        files.append(path)
    works = [
        pipeline.Work(f"s{i}", FileSource(p), Cursor(), None, RegexParser(), Resample("25ms"), None)
        for i, p in enumerate(files)
    ]
    batch = pipeline.tick(works)
    assert len(calls) >= 1
    for work, got in zip(works, batch, strict=True):
        chunk = pipeline.extract(work.source, work.cursor)
        alone = pipeline.transform(chunk, work.parser, work.transform, None)
        pd.testing.assert_frame_equal(got.frame, alone.frame)
        a, b = got.summary, alone.summary
        assert (a.lines, a.malformed, a.span, a.cursor) == (b.lines, b.malformed, b.span, b.cursor)
        assert [s.line for s in a.samples] == [s.line for s in b.samples]
        pd.testing.assert_frame_equal(value(a.carry).rows.frame(), value(b.carry).rows.frame())
        assert a.seconds > 0


def test_one_stream_with_a_bad_line_costs_a_few_reads_not_one_a_stream(monkeypatch):
    calls = counting(monkeypatch)
    parser = RegexParser(keep=10**6)
    streams = [clean(1000 * i) for i in range(32)]
    streams[21] = clean(21_000, 2) + CASES["not finite"]
    chunks = [(data_of(e), 1 + 50 * i, f"s{i}") for i, e in enumerate(streams)]
    parsed = together.parse_together(parser, chunks)
    assert len(calls) < 16  # halves down to the stream: 1 + 2 a level; alone, 33
    for got, e, (_, first, _) in zip(parsed, streams, chunks, strict=True):
        check_parsed(got, e, first)
