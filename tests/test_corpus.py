"""Issue 12: malformed input through RegexParser, ``pipeline.transform`` (Resample and
raw rows) and the tick loop (LocalCluster, FTP server). Nothing raises, and every line is a
row (in a period's count), malformed (a sample at its line number whose reason names the
problem), late (its period already published) or blank (skipped, ``Parsed.blank``).
"""

from __future__ import annotations

import asyncio
import itertools
import pickle
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
from distributed import LocalCluster
from faultreport import record
from helpers import tail

from headrace.etl.loop import pipeline
from headrace.etl.parse.lines import drop_nul_padding
from headrace.etl.parse.regex import RegexParser
from headrace.etl.sources.base import Chunk, Cursor
from headrace.etl.store.pickles import value
from headrace.etl.streams import Stream
from headrace.etl.transforms import Map, Resample

T0 = pd.Timestamp("2026-11-23T09:00:00Z").value  # on a 25 ms boundary
MS = 10**6
KEYED = r"^(?P<time>\S+)\s+(?P<key>\S+)\s+(?P<value>\S+)\s*$"
RANGE = "outside 1677-09-21..2262-04-11"
AHEAD = "more than 1h ahead of the clock (max_future)"
CR = "a CR inside: only LF ends a line"
NO_MATCH = "does not match pattern"
# Unparseable, and beyond datetime64[ns] (years 1500 and 9999, just before and after it).
BAD_TIMES = "2026-13-01T00:00:00Z yesterday now 2026-11-23T25:00Z 12:00:00 2026-11-23t09Z".split()  # noqa: SIM905
FAR_TIMES = "1500-01-01T00:00:00Z 9999-12-31T23:59:59Z 1677-09-21T00:12:43Z 2262-04-12".split()  # noqa: SIM905


@dataclass(frozen=True)
class Row:  # a good line: a row with this time (ns since the epoch) and value
    time: int
    value: float


@dataclass(frozen=True)
class Bad:  # a malformed line: its sample's reason holds each of ``reason``, or is ``exact``
    reason: tuple[str, ...] = ()
    exact: str | None = None


BLANK = "blank"
Entry = tuple[bytes, Row | Bad | str]  # one physical line (ends with b"\n") and its fate


def at(ms: float) -> int:
    """ns since the epoch of ``ms`` after T0, to the microsecond (what ``iso`` writes)."""
    return T0 + round(ms * 1000) * 1000


def iso(ms: float) -> bytes:
    return pd.Timestamp(at(ms), tz="UTC").strftime("%Y-%m-%dT%H:%M:%S.%fZ").encode()


def good(ms: float, value: float = 1.5) -> Entry:
    return iso(ms) + f" {value}\n".encode(), Row(at(ms), value)


def around(bad: list[Entry], base: float) -> list[Entry]:
    """Each bad line between good ones, a millisecond apart from ``base``."""
    out = [good(base)]
    for i, entry in enumerate(bad, 1):
        out += [entry, good(base + i, float(i))]
    return out


def garbage(seed: int, size: int) -> list[bytes]:
    """Random bytes cut at their newlines; a line of only bytes <= 0x20 gets a 0x7f, so
    every line is certainly malformed (blank-looking ones are the "empty" kind's)."""
    pieces = np.random.default_rng(seed).bytes(size).split(b"\n")
    return [(p if max(p, default=0) > 0x20 else b"\x7f" + p) + b"\n" for p in pieces]


def zoned(ms: float, offset: str) -> bytes:
    """``ms`` after T0 written in local time at ``offset`` ("+02:00", "-0530", "Z", "")."""
    sign, digits = (-1 if offset[:1] == "-" else 1), offset.strip("+-Z").replace(":", "")
    shift = sign * pd.Timedelta(hours=int(digits[:2] or 0), minutes=int(digits[2:] or 0))
    local = pd.Timestamp(at(ms)) + shift
    return local.strftime("%Y-%m-%dT%H:%M:%S.%f").encode() + offset.encode()


def kinds(spread: float = 0) -> dict[str, list[Entry]]:
    """The corpus: kind -> lines and their fates; kind i's times start ``i * spread`` ms in."""
    builders = {
        "binary": lambda b: around([(g, Bad()) for g in garbage(1, 4096)], b),
        "nul": lambda b: around(
            [
                (iso(b)[:20] + b"\x00" + iso(b)[20:] + b" 1\n", Bad(("bad time", "NUL bytes"))),
                (iso(b) + b" 1\x005\n", Bad(exact="bad value '1\\x005' (NUL bytes inside)")),
                (iso(b) + b"\x00 1\n", Bad(("bad time", "NUL bytes inside"))),
                (b"\x00" * 300 + b"\n", BLANK),  # what a crash leaves in a preallocated log
                (b"\x00 \x00\n", BLANK),
                (b"\x00" * 50 + iso(b + 0.5) + b" 7\n", Row(at(b + 0.5), 7.0)),
                (iso(b + 0.5) + b" 8" + b"\x00" * 50 + b"\n", Row(at(b + 0.5), 8.0)),
            ],
            b,
        ),
        "crlf": lambda b: [  # every line ends in CRLF
            (line.replace(b"\n", b"\r\n"), fate)
            for line, fate in around(
                [
                    (b"garbage\n", Bad(exact=NO_MATCH)),
                    (b"\n", BLANK),
                    (b" \n", BLANK),
                    (iso(b + 0.5) + b" 2.25 \n", Row(at(b + 0.5), 2.25)),
                ],
                b,
            )
        ],
        "cr-only": lambda b: around(
            [
                (iso(b) + b" 2\r" + iso(b) + b" 3\r" + iso(b) + b" 4\n", Bad((CR,))),
                (iso(b) + b" 2\r" + iso(b) + b" 3\r\n", Bad(exact=f"{NO_MATCH} ({CR})")),
                (b"\r" + iso(b) + b" 2\n", Bad((CR,))),
                (iso(b + 0.5) + b"\r3\n", Row(at(b + 0.5), 3.0)),  # to \s+ a CR is whitespace
            ],
            b,
        ),
        "1MB line": lambda b: around(
            [
                (b"x" * (1 << 20) + b"\n", Bad(exact=f"{NO_MATCH} (1048576 bytes long)")),
                (iso(b) + b" " + b"9" * (1 << 20) + b"\n", Bad(("bad value", "not a finite"))),
                (b"2" * (1 << 20) + b" 1\n", Bad(("bad time '222", "1048578 bytes long"))),
            ],
            b,
        ),
        "invalid utf-8": lambda b: around(
            [
                (b"\xff\xfe 1\n", Bad(exact="bad time '\ufffd\ufffd' (invalid UTF-8)")),
                (iso(b) + b" \xc3(\n", Bad(("bad value '\ufffd('", "invalid UTF-8"))),
                (iso(b) + b" 1\xe2\n", Bad(("bad value", "invalid UTF-8"))),
                (b"\xe2\x82\n", Bad(("does not match", "invalid UTF-8"))),  # cut before the LF
                (b"\xc0\xaf \xed\xa0\x80\n", Bad(("invalid UTF-8",))),  # overlong, surrogate
            ],
            b,
        ),
        "bad times": lambda b: around(
            [(f"{t} 1\n".encode(), Bad(exact=f"bad time {t!r}")) for t in BAD_TIMES], b
        ),
        "out of range": lambda b: around(
            [(f"{t} 1\n".encode(), Bad(exact=f"bad time {t!r} ({RANGE})")) for t in FAR_TIMES], b
        ),
        "far future": lambda b: around(
            [
                (f"{t} 1\n".encode(), Bad(exact=f"time {t!r} is {AHEAD}"))
                for t in (
                    "2099-01-01T00:00:00Z",
                    "2262-04-11T00:00:00Z",
                    "2200-06-01T12:00:00+02:00",
                )
            ],
            b,
        ),
        "time zones": lambda b: [
            (zoned(b + i, zone) + f" {i}\n".encode(), Row(at(b + i), float(i)))
            for i, zone in enumerate(["Z", "+02:00", "-0530", "-00:00", "+05:45", "-14:00", ""])
        ],
        "not finite": lambda b: around(
            [
                (iso(b) + f" {v}\n".encode(), Bad(exact=f"bad value {v!r} (not a finite number)"))
                for v in ("nan", "NaN", "-nan", "inf", "-inf", "Infinity", "1e400", "-1e309")
            ],
            b,
        ),
        "empty": lambda b: around(
            [(line, BLANK) for line in (b"\n", b"   \n", b"\t\n", b"\r\n", b" \t\x0b\x0c\n")], b
        ),
        "out of order": lambda b: [good(b + ms, ms) for ms in (50, 10, 30, 0, 49, 20, 75, 1)],
        "duplicates": lambda b: [good(b + 5, v) for v in (1.0, 1.0, 2.0, 1.0)] + [good(b + 30)],
    }
    return {kind: build(i * spread) for i, (kind, build) in enumerate(builders.items())}


CASES = kinds()


def data_of(entries: list[Entry]) -> bytes:
    return b"".join(line for line, _ in entries)


def rows_of(frame: pd.DataFrame) -> list[Row]:
    times, values = frame["time"].array.asi8.tolist(), frame["value"].tolist()
    return [Row(t, v) for t, v in zip(times, values, strict=True)]


def check_samples(samples: list, entries: list[Entry], first_line: int = 1) -> None:
    """Each malformed entry has its sample, at its line, naming its problem; no other has."""
    got = {s.line: s.reason for s in samples}
    assert len(got) == len(samples)  # one sample per line number
    bad = {n: fate for n, (_, fate) in enumerate(entries, first_line) if isinstance(fate, Bad)}
    assert sorted(got) == sorted(bad)
    for n, fate in bad.items():
        assert fate.exact is None or got[n] == fate.exact, (n, got[n])
        assert all(part in got[n] for part in fate.reason), (n, got[n], fate.reason)
        line = entries[n - first_line][0]
        assert ("invalid UTF-8" in got[n]) == (line.decode("utf-8", "replace").encode() != line)


def check_parsed(parsed, entries: list[Entry], first_line: int = 1) -> None:
    fates = [fate for _, fate in entries]
    rows = [f for f in fates if isinstance(f, Row)]
    assert parsed.lines + parsed.blank == len(entries)  # every line is numbered
    assert parsed.blank == fates.count(BLANK)
    assert parsed.lines == len(parsed.frame) + parsed.malformed
    assert rows_of(parsed.frame) == rows  # the good lines, in file order, none lost
    check_samples(parsed.samples, entries, first_line)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", CASES)
def test_parser_alone_and_among_clean_lines(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    entries = CASES[kind]
    check_parsed(RegexParser(keep=10**6).parse(data_of(entries)), entries)
    # Among 30,000 clean lines, in small pieces: the CSV path takes the clean ranges, cuts
    # them down round the bad lines, and the general path gets those.
    monkeypatch.setattr(RegexParser, "PIECE", 64 << 10)
    monkeypatch.setattr(RegexParser, "MIN_CSV", 4 << 10)
    whole = [good(-1000 + i / 100) for i in range(15_000)] + entries
    whole += [good(2000 + i / 100) for i in range(15_000)]
    parsed = RegexParser(keep=10**6).parse(data_of(whole), first_line=7)
    check_parsed(parsed, whole, first_line=7)


@pytest.mark.timeout(30)
def test_nul_padding_is_what_a_regex_would_drop() -> None:
    rule = re.compile(rb"^\x00+|\x00+(?=\r?$)", re.MULTILINE)  # the rule, slow on big chunks
    rng = np.random.default_rng(0)
    alphabet = np.frombuffer(b"\x00\x00\x00\r\n a1", np.uint8)
    for _ in range(20_000):
        data = alphabet[rng.integers(0, len(alphabet), rng.integers(0, 30))].tobytes()
        assert drop_nul_padding(data) == rule.sub(b"", data), data


def ticks(entries: list[Entry], cuts: list[int]) -> list[tuple[int, list[Entry]]]:
    """The entries as consecutive chunks cut before the given indices: (first line, entries)."""
    bounds = [0, *sorted(set(cuts)), len(entries)]
    return [(a + 1, entries[a:b]) for a, b in itertools.pairwise(bounds)]


CHUNK = dict(cursor=Cursor(), transfers=1, reset=None, source="corpus.log")


def run_pipeline(
    chunks: list[tuple[int, list[Entry]]], transform, parser=None
) -> list[pipeline.Result]:
    """``pipeline.transform`` tick after tick, the carry pickled in between as by the loop."""
    parser = parser or RegexParser(keep=10**6)
    results, carry = [], None
    for first, entries in chunks:
        chunk = Chunk(data=data_of(entries), first_line=first, **CHUNK)
        result = pipeline.transform(chunk, parser, transform, carry)
        carry = pickle.loads(pickle.dumps(result.summary.carry))
        results.append(result)
    return results


def accounted(results: list[pipeline.Result]) -> dict[str, int]:
    """Totals over the ticks; ``published`` counts rows in periods for Resample's frames."""
    n = {k: sum(getattr(r.summary, k) for r in results) for k in ("lines", "malformed", "late")}
    frames = [r.frame for r in results]
    n["published"] = sum(int(f["count"].sum()) if "count" in f else len(f) for f in frames)
    return {**n, "carried": results[-1].summary.carried}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", CASES)
def test_every_line_accounted_through_the_pipeline(kind: str) -> None:
    entries = CASES[kind]
    fates = [fate for _, fate in entries]
    rows = [f for f in fates if isinstance(f, Row)]
    rng = np.random.default_rng(len(kind))
    for _ in range(3):
        chunks = ticks(entries, rng.integers(0, len(entries), 4).tolist())
        for transform in (Resample("25ms", "mean"), Map(lambda frame: frame)):
            results = run_pipeline(chunks, transform)
            n = accounted(results)
            assert n["lines"] == len(entries) - fates.count(BLANK)
            assert n["malformed"] == sum(isinstance(f, Bad) for f in fates)
            # lines == rows + malformed, and the rows are published, late or carried
            assert n["published"] + n["late"] + n["carried"] == n["lines"] - n["malformed"]
            samples = [s for r in results for s in r.summary.samples]
            check_samples(samples, entries)
            if isinstance(transform, Map):
                got = [row for r in results for row in rows_of(r.frame)]
                assert sorted(got, key=repr) == sorted(rows, key=repr)


@pytest.mark.timeout(30)
def test_late_rows_across_ticks_are_counted_and_duplicates_aggregated() -> None:
    first = [good(0), good(5, 1.0), good(5, 3.0), good(5, 5.0), good(60), good(30), good(110)]
    # By now 0-25 ms, 25-50 and 50-75 were published: rows for them are late; 100-125 is open.
    second = [good(10), good(49), good(74.9), good(105), good(101), good(130)]
    results = run_pipeline(ticks(first + second, [len(first)]), Resample("25ms", "mean"))
    one, two = (r.frame for r in results)
    assert one["time"].array.asi8.tolist() == [T0, T0 + 25 * MS, T0 + 50 * MS]
    assert one["count"].tolist() == [4, 1, 1] and one["value"].tolist()[0] == 10.5 / 4
    assert results[1].summary.late == 3
    assert two["count"].tolist() == [3]  # 100-125: 110, 105 and 101; 130 is carried
    assert accounted(results) == dict(lines=13, malformed=0, published=9, late=3, carried=1)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "parser",
    [
        RegexParser(KEYED),
        RegexParser(r"^(?P<time>\S+) (?P<value>\S+)(?= ok$)"),  # not RE2: pandas
        RegexParser(r"^(?P<time>[^,]+),(?P<value>.*)$"),
        RegexParser(time_format="epoch"),
        RegexParser(time_format="epoch_ms"),
        RegexParser(time_format="%Y-%m-%dT%H:%M:%S.%fZ"),
    ],
    ids=["keyed", "not-re2", "csv-like", "epoch", "epoch_ms", "strftime"],
)
def test_other_patterns_and_formats_survive_the_corpus(parser: RegexParser) -> None:
    everything = [e for entries in CASES.values() for e in entries]
    everything += [(f"{t} 1\n".encode(), None) for t in ("1e30", 10**30, "-1e30", 1795424400)]
    data = data_of(everything)
    parsed = parser.parse(data)
    assert parsed.lines + parsed.blank == data.count(b"\n")
    assert parsed.lines == len(parsed.frame) + parsed.malformed
    assert len(parsed.samples) == min(parsed.malformed, parser.keep)
    assert all(1 <= s.line <= data.count(b"\n") and s.reason for s in parsed.samples)
    Resample().step(parsed.frame, None)  # and the transform takes what it gives
    for line, _ in everything:  # a tick of one line (a quiet log) takes other code paths
        parsed = parser.parse(line)
        assert parsed.lines + parsed.blank == 1
        assert parsed.lines == len(parsed.frame) + parsed.malformed


@pytest.fixture(scope="module")
def cluster(cluster_options):
    # Two workers, so that a tick's extract and transform may run on different ones.
    with LocalCluster(**{**cluster_options, "n_workers": 2, "threads_per_worker": 1}) as c:
        yield c


@pytest.mark.fault  # a row of the reliability table
@pytest.mark.timeout(150)
def test_the_corpus_through_the_tick_loop(cluster, ftp_server, ftp_root, tmp_path) -> None:
    """The whole corpus over FTP, a kind per tick, then rows for periods already published."""
    late = [good(10), good(1005, 2.0), good(5012, 3.0)]  # periods long published by then
    corpus = [*kinds(spread=1000).values(), late, [good(20_000)]]
    path = ftp_root / "corpus.log"
    path.write_bytes(b"")
    url = ftp_server.url("corpus.log")
    streams = [
        Stream("corpus-raw", url, parser=RegexParser(keep=1000), transform=None, interval=0.05),
        Stream("corpus-25ms", url, parser=RegexParser(keep=1000), interval=0.05),
    ]
    runners, frames, letters = asyncio.run(
        tail(cluster.scheduler_address, streams, path, [data_of(p) for p in corpus], tmp_path)
    )
    everything = [entry for piece in corpus for entry in piece]
    fates = [fate for _, fate in everything]
    rows = [f for f in fates if isinstance(f, Row)]
    lines = len(everything) - fates.count(BLANK)
    malformed = sum(isinstance(f, Bad) for f in fates)
    for name, runner in runners.items():
        h = runner.health
        assert (h.lines, h.blank, h.malformed) == (lines, fates.count(BLANK), malformed), name
        malformed_letters = [x for x in letters[name] if not x.reason.startswith("late")]
        check_samples(malformed_letters, everything)  # every malformed line kept, with its reason
    raw = [row for _, frame in frames["corpus-raw"] for row in rows_of(frame)]
    assert sorted(raw, key=repr) == sorted(rows, key=repr)  # every good line published once
    assert runners["corpus-raw"].health.late == 0

    agg = runners["corpus-25ms"]
    published = sum(int(frame["count"].sum()) for _, frame in frames["corpus-25ms"])
    carried = len(value(agg.state.carry).rows)
    assert agg.health.late == len(late)
    # Late lines are dead letters too, at their own lines, with their text.
    first_late = len(everything) - len(late) - 1  # the last piece is one good line
    kept = sorted((x.line, x.text) for x in letters["corpus-25ms"] if x.reason.startswith("late"))
    want = [(first_late + i, line.decode().strip()) for i, (line, _) in enumerate(late, 1)]
    assert kept == want
    assert (published, carried) == (len(rows) - len(late) - 1, 1)  # the last line's period
    assert published + agg.health.late + carried == lines - malformed
    record(
        "malformed input",
        f"{len(corpus) - 2} kinds of bad input and late lines among good ones, a kind a "
        "tick, through the loop on Dask (raw and 25 ms streams)",
        written=len(everything),
        published=published,
        open=carried,
        lost=0,
        duplicated=0,
        malformed_with_reason=malformed,
        late=agg.health.late,
        blank=fates.count(BLANK),
    )
