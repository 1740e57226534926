"""RegexParser: vectorised parsing of log lines into the contract frame."""

from __future__ import annotations

import pickle
import re

import numpy as np
import pandas as pd
import pytest

from headrace.etl.parse.parser import Malformed
from headrace.etl.parse.regex import DEFAULT_PATTERN, RegexParser

KEYED = r"^(?P<time>\S+)\s+(?P<key>\S+)\s+(?P<value>\S+)\s*$"


def ns(*times: str) -> list[int]:
    return [pd.Timestamp(t).as_unit("ns").value for t in times]


def times_of(frame: pd.DataFrame) -> list[int]:
    return frame["time"].array.asi8.tolist()


def test_demo_lines() -> None:
    data = b"2026-11-23T09:17:02.123456Z 0.103412\n2026-11-23T09:17:02.148000Z -1.5\n"
    parsed = RegexParser().parse(data)
    assert list(parsed.frame.columns) == ["time", "value"]
    assert str(parsed.frame["time"].dtype) == "datetime64[ns, UTC]"
    assert parsed.frame["value"].dtype == np.float64
    assert times_of(parsed.frame) == ns("2026-11-23T09:17:02.123456Z", "2026-11-23T09:17:02.148Z")
    assert parsed.frame["value"].tolist() == [0.103412, -1.5]
    assert (parsed.lines, parsed.malformed, parsed.samples) == (2, 0, [])


@pytest.mark.parametrize("csv", [True, False])
def test_a_time_far_ahead_of_the_clock_is_malformed_and_alone(csv: bool) -> None:
    # One line stamped 2099 must not close every period until 2099 (all later lines late).
    now = pd.Timestamp.now(tz="UTC")
    soon, far = now + pd.Timedelta("59min"), now + pd.Timedelta("61min")
    lines = [f"{t.isoformat()} {i}\n".encode() for i, t in enumerate([now, far, soon])]
    lines.insert(2, b"2099-01-01T00:00:00Z 7\n")
    parser = RegexParser()
    parser.use_csv = csv
    parsed = parser.parse(b"".join(lines), first_line=10, source="a.log")
    assert parsed.frame["value"].tolist() == [0.0, 2.0]
    assert [(m.line, m.reason) for m in parsed.samples] == [
        (11, f"time {far.isoformat()!r} is more than 1h ahead of the clock (max_future)"),
        (12, "time '2099-01-01T00:00:00Z' is more than 1h ahead of the clock (max_future)"),
    ]
    unbounded = RegexParser(max_future=None).parse(b"".join(lines))
    assert unbounded.malformed == 0 and len(unbounded.frame) == 4
    wide = RegexParser(max_future="2h").parse(b"".join(lines))
    assert [m.line for m in wide.samples] == [3]


@pytest.mark.parametrize("bad", ["soon", "-5min", 3.5j])
def test_max_future_must_be_a_duration(bad) -> None:
    with pytest.raises(ValueError, match="max_future"):
        RegexParser(max_future=bad)


def test_time_dtype_is_ns_even_for_whole_seconds() -> None:
    for data in (b"2026-11-23T09:17:02Z 1\n", b"2026-11-23T09:17:02 1\n", b""):
        frame = RegexParser().parse(data).frame
        assert str(frame["time"].dtype) == "datetime64[ns, UTC]"
        assert frame["value"].dtype == np.float64


def test_malformed_lines_keep_their_neighbours() -> None:
    data = (
        b"2026-11-23T09:00:00Z 1\n"
        b"garbage\n"
        b"2026-11-23T09:00:01Z 2\n"
        b"2026-11-23T09:00:02Z abc\n"
        b"2026-11-23T09:00:03Z 3\n"
        b"yesterday 4\n"
        b"2026-11-23T09:00:04Z 5\n"
    )
    parsed = RegexParser().parse(data, first_line=101, source="ftp://h/demo.log")
    assert parsed.frame["value"].tolist() == [1, 2, 3, 5]
    assert times_of(parsed.frame) == ns(*(f"2026-11-23T09:00:0{i}Z" for i in (0, 1, 3, 4)))
    assert (parsed.lines, parsed.malformed) == (7, 3)
    assert parsed.samples == [
        Malformed(102, "does not match pattern", "garbage", "ftp://h/demo.log"),
        Malformed(104, "bad value 'abc'", "2026-11-23T09:00:02Z abc", "ftp://h/demo.log"),
        Malformed(106, "bad time 'yesterday'", "yesterday 4", "ftp://h/demo.log"),
    ]
    assert str(parsed.samples[0]) == "ftp://h/demo.log:102: does not match pattern: 'garbage'"


@pytest.mark.parametrize("value", ["abc", "NA", "1.2.3", "-", "1,5", "0x10", "é"])
def test_bad_values(value: str) -> None:
    data = f"2026-11-23T09:00:00Z 1\n2026-11-23T09:00:01Z {value}\n".encode()
    parsed = RegexParser().parse(data)
    assert parsed.frame["value"].tolist() == [1.0]
    assert parsed.samples[0].reason == f"bad value {value!r}"
    assert parsed.samples[0].line == 2


@pytest.mark.parametrize("value", ["nan", "NaN", "-nan", "inf", "-inf", "Infinity", "1e400"])
@pytest.mark.parametrize("path", ["csv", "general"])
def test_values_must_be_finite(value: str, path: str) -> None:
    # A NaN or inf would turn its period's mean and sum, and every rollup over them, to NaN/inf.
    good = b"2026-11-23T09:00:00Z" + (b" " if path == "csv" else b"\t") + b"1\n"  # a tab: no CSV
    data = good + f"2026-11-23T09:00:01Z {value}\n".encode() + good
    parsed = RegexParser().parse(data)
    assert parsed.frame["value"].tolist() == [1.0, 1.0]
    assert parsed.malformed == 1
    assert parsed.samples[0].reason == f"bad value {value!r} (not a finite number)"


@pytest.mark.parametrize(
    "time",
    ["xx", "now", "2026-13-01T00:00:00Z", "2026-02-30T00:00:00Z", "2026-11-23T25:00:00Z"],
)
def test_bad_times(time: str) -> None:
    data = f"{time} 1\n2026-11-23T09:00:01Z 2\n".encode()
    parsed = RegexParser().parse(data)
    assert parsed.frame["value"].tolist() == [2.0]
    assert (parsed.malformed, parsed.samples[0].reason) == (1, f"bad time {time!r}")


@pytest.mark.parametrize(
    ("time", "fmt"),
    [
        ("1500-01-01T00:00:00Z", "ISO8601"),
        ("9999", "ISO8601"),  # the year 9999
        ("1e30", "epoch"),
        ("1000000000000000000000000000000", "epoch"),
        ("-1e30", "epoch_ms"),
    ],
)
def test_times_out_of_range_say_so(time: str, fmt: str) -> None:
    good = "2026-11-23T09:00:01Z" if fmt == "ISO8601" else "1795424401"
    data = f"{good} 1\n{time} 2\n{good} 3\n".encode()
    parsed = RegexParser(time_format=fmt).parse(data)
    assert parsed.frame["value"].tolist() == [1.0, 3.0]
    assert parsed.samples == [
        Malformed(2, f"bad time {time!r} (outside 1677-09-21..2262-04-11)", f"{time} 2")
    ]
    nan = RegexParser(time_format="epoch").parse(b"nan 1\n").samples[0].reason
    assert nan == "bad time 'nan' (not a finite number)"


def test_other_iso_forms_and_naive_times_are_utc() -> None:
    data = (
        b"2026-11-23T10:00:00+01:00 1\n"
        b"2026-11-23T09:00:00 2\n"
        b"2026-11-23T09:00:00.5Z 3\n"
        b"2026-11-23T09:00:00.123456789Z 4\n"
    )
    parsed = RegexParser().parse(data)
    expected = ns("2026-11-23T09:00Z", "2026-11-23T09:00Z", "2026-11-23T09:00:00.5Z")
    assert times_of(parsed.frame) == [*expected, expected[0] + 123456789]


def test_invalid_utf8_does_not_crash() -> None:
    data = (
        b"2026-11-23T09:00:00Z 1\n"
        b"\xff\xfe\x80 2\n"
        b"2026-11-23T09:00:01Z \xc3\n"
        b"2026-11-23T09:00:02Z 3\n"
    )
    parsed = RegexParser().parse(data)
    assert parsed.frame["value"].tolist() == [1, 3]
    assert [s.line for s in parsed.samples] == [2, 3]
    assert parsed.samples[0].text == "\ufffd\ufffd\ufffd 2"
    assert parsed.samples[0].reason == "bad time '\ufffd\ufffd\ufffd' (invalid UTF-8)"


def test_blank_lines_are_ignored_but_numbered() -> None:
    data = b"\n2026-11-23T09:00:00Z 1\n  \n\t\r\n\nbad\n\n"
    parsed = RegexParser().parse(data)
    assert parsed.frame["value"].tolist() == [1]
    assert (parsed.lines, parsed.malformed, parsed.blank) == (2, 1, 5)
    assert parsed.samples[0].line == 6


def test_byte_order_mark_at_the_start_of_the_file() -> None:
    line = b"2026-11-23T09:00:00Z 1\n"
    assert RegexParser().parse(b"\xef\xbb\xbf" + line).frame["value"].tolist() == [1]
    parsed = RegexParser().parse(b"\xef\xbb\xbf" + line, first_line=5)  # elsewhere: in the line
    assert parsed.samples[0].reason == "bad time '\\ufeff2026-11-23T09:00:00Z'"


def test_a_short_line_alone_with_a_keyed_pattern() -> None:
    # Was an IndexError in the fast split, which failed the tick on every retry.
    for data in (b"x\n", b"\n", b"a b\n", b"x"):
        parsed = RegexParser(KEYED).parse(data)
        assert len(parsed.frame) == 0 and parsed.malformed == parsed.lines


def test_crlf_and_missing_final_newline() -> None:
    parsed = RegexParser().parse(b"2026-11-23T09:00:00Z 1\r\n2026-11-23T09:00:01Z 2")
    assert parsed.frame["value"].tolist() == [1, 2]
    assert (parsed.lines, parsed.malformed) == (2, 0)


def test_key_group() -> None:
    data = b"2026-11-23T09:00:00Z pump 1\n2026-11-23T09:00:00Z fan 2\n2026-11-23T09:00:01Z 3\n"
    parsed = RegexParser(KEYED).parse(data)
    assert list(parsed.frame.columns) == ["time", "value", "key"]
    assert parsed.frame["key"].tolist() == ["pump", "fan"]
    assert parsed.frame["key"].dtype == "str"
    assert parsed.samples[0].reason == "does not match pattern"


def test_custom_pattern_with_epoch_times() -> None:
    pattern = r"^(?P<value>[-\d.]+);(?P<time>\d+(?:\.\d+)?);"
    data = b"1.5;1795425422.25;x\n2.5;1795425423;y\n-.-;1;\n"
    parsed = RegexParser(pattern, time_format="epoch").parse(data)
    assert times_of(parsed.frame) == [1795425422250000000, 1795425423000000000]
    assert parsed.frame["value"].tolist() == [1.5, 2.5]
    assert parsed.samples[0].reason == "bad value '-.-'"


def test_epoch_ms_and_strftime_formats() -> None:
    frame = RegexParser(time_format="epoch_ms").parse(b"1795425422250 1\n").frame
    assert times_of(frame) == [1795425422250000000]
    pattern = r"^(?P<time>\d\d/\d\d/\d{4} \d\d:\d\d),(?P<value>\S+)$"
    parsed = RegexParser(pattern, time_format="%d/%m/%Y %H:%M").parse(b"23/11/2026 09:17,4\n1,2\n")
    assert times_of(parsed.frame) == ns("2026-11-23T09:17Z")
    assert parsed.malformed == 1


def test_pattern_outside_re2_falls_back_to_pandas() -> None:
    parser = RegexParser(r"^(?P<time>\S+) (?P<value>\S+)(?= ok$)")
    assert not parser.use_re2
    parsed = parser.parse(b"2026-11-23T09:00:00Z 1 ok\n2026-11-23T09:00:01Z 2 no\n")
    assert parsed.frame["value"].tolist() == [1]
    assert parsed.samples[0].line == 2


@pytest.mark.parametrize(
    ("pattern", "missing"),
    [(r"(?P<time>\S+) (\S+)", "value"), (r"(\S+) (?P<value>\S+)", "time"), (r"(.*)", "time")],
)
def test_pattern_missing_a_group(pattern: str, missing: str) -> None:
    with pytest.raises(ValueError, match=missing):
        RegexParser(pattern)


def test_invalid_regex() -> None:
    with pytest.raises(ValueError, match="invalid regex"):
        RegexParser(r"(?P<time>\S+ (?P<value>\S+)")


def test_unknown_time_format() -> None:
    with pytest.raises(ValueError, match="iso"):
        RegexParser(time_format="iso")


def test_keep_limits_samples_to_the_last_ones() -> None:
    data = b"".join(f"bad{i}\n".encode() for i in range(120))
    # By default the newest 100 of a tick (for the dead-letter store).
    assert [s.line for s in RegexParser().parse(data).samples] == list(range(21, 121))
    assert [s.line for s in RegexParser(keep=2).parse(data).samples] == [119, 120]
    assert RegexParser(keep=0).parse(data).samples == []
    assert RegexParser(keep=0).parse(data).malformed == 120


def test_long_lines_are_cut_in_samples() -> None:
    sample = RegexParser().parse(b"x" * 1000 + b"\n").samples[0]
    assert sample.text == "x" * 200
    assert sample.reason == "does not match pattern (1000 bytes long)"


def test_pickles() -> None:
    parser = RegexParser(KEYED, keep=3)
    clone = pickle.loads(pickle.dumps(parser))
    data = b"2026-11-23T09:00:00Z a 1\nbad\n"
    a, b = parser.parse(data), clone.parse(data)
    pd.testing.assert_frame_equal(a.frame, b.frame)
    assert a.samples == b.samples
    assert pickle.loads(pickle.dumps(a.samples)) == a.samples


NS_MIN, NS_MAX = pd.Timestamp.min.tz_localize("UTC"), pd.Timestamp.max.tz_localize("UTC")


# A per-line reference with Python's re and pandas, to check both fast paths
# (CSV reader, string views) and the regex path against on random input.


def reference(data: bytes, pattern: str) -> tuple[list[int], list[float], int, list[tuple]]:
    rx = re.compile(pattern, re.ASCII)
    raw = data.split(b"\n")
    if raw[-1] == b"":
        raw.pop()
    times, values, bad, lines = [], [], [], 0
    for number, line in enumerate(raw, 1):
        text = line.removesuffix(b"\r").decode("utf-8", "replace")
        if not text.strip(" \t\r\n\x0b\x0c"):
            continue
        lines += 1
        m = rx.search(text)
        if m is None:
            bad.append((number, "does not match pattern", [], line))
            continue
        t = pd.to_datetime(m["time"], format="ISO8601", utc=True, errors="coerce")
        v = pd.to_numeric(m["value"], errors="coerce")
        # pandas reads times beyond datetime64[ns] (at a coarser unit): those are out of range
        fits = t is not pd.NaT and NS_MIN <= t <= NS_MAX
        if not fits or not m["time"][:1].isdigit():
            detail = ["outside 1677-09-21..2262-04-11"] if t is not pd.NaT and not fits else []
            bad.append((number, f"bad time {m['time'][:60]!r}", detail, line))
        elif not np.isfinite(v):
            finite = m["value"].lower().lstrip("+-") not in ("nan", "inf")
            detail = [] if finite and np.isnan(v) else ["not a finite number"]
            bad.append((number, f"bad value {m['value'][:60]!r}", detail, line))
        else:
            times.append(t.as_unit("ns").value)
            values.append(float(v))
    return times, values, lines, [(n, reason + odd(d, line)) for n, reason, d, line in bad]


def odd(details: list[str], line: bytes) -> str:
    """What the parser adds to a reason for a line's odd bytes."""
    line = line.removesuffix(b"\r")
    details = details + ["a CR inside: only LF ends a line"] * (b"\r" in line)
    try:
        line.decode()
    except UnicodeDecodeError:
        details.append("invalid UTF-8")
    return f" ({'; '.join(details)})" if details else ""


TIMES = [
    "2026-11-23T09:17:02.123456Z",
    "2026-11-23T09:17:03.5Z",
    "2026-11-23T09:17:04Z",
    "2026-11-23T10:17:05+01:00",
    "2026-11-23T03:47:05-0530",
    "2026-11-23T09:17:06",
    "1500-01-01T00:00:00Z",
    "2026-02-30T00:00:00Z",
    "xx",
    "now",
]
VALUES = [
    "0.103412",
    "-3.25",
    "1e3",
    "42",
    "inf",
    "-inf",
    "1e400",
    "+1",
    "abc",
    "nan",
    "NA",
    "1.2.3",
    "é",
]
SHAPES = [
    "{t} {v}",
    "{t} {v}",
    "{t} {v}",
    "{t}  {v}",
    " {t} {v}",
    "{t} {v} ",
    "{t} {v} extra",
    "{t}",
    "",
    "   ",
]


def random_log(rng: np.random.Generator, n: int, odd: bool) -> bytes:
    """Mostly good lines; ``odd`` adds tabs, CRs and invalid UTF-8 (off the CSV path)."""
    shapes = SHAPES + (["{t}\t{v}", "{t} {v}\r", "<ff> {v}", "{t} 1<ff>"] if odd else [])
    out = []
    for _ in range(n):
        good = rng.random() < 0.8
        t = TIMES[0 if good else rng.integers(len(TIMES))]
        v = VALUES[0 if good else rng.integers(len(VALUES))]
        shape = shapes[0 if good else rng.integers(len(shapes))]
        out.append(shape.format(t=t, v=v).encode().replace(b"<ff>", b"\xff"))  # bad UTF-8
    return b"\n".join(out) + (b"\n" if rng.random() < 0.8 else b"")


@pytest.mark.parametrize("seed", range(8))
def test_matches_per_line_reference(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # Small pieces so one input takes the CSV path, cutting and the general path.
    monkeypatch.setattr(RegexParser, "PIECE", 2048)
    monkeypatch.setattr(RegexParser, "MIN_CSV", 256)
    rng = np.random.default_rng(seed)
    data = random_log(rng, 400, odd=seed % 2 == 1)
    parsed = RegexParser(DEFAULT_PATTERN, keep=1000).parse(data)
    times, values, lines, bad = reference(data, DEFAULT_PATTERN)
    assert times_of(parsed.frame) == times
    assert parsed.frame["value"].tolist() == values
    assert (parsed.lines, parsed.malformed) == (lines, len(bad))
    assert [(s.line, s.reason) for s in parsed.samples] == bad


@pytest.mark.parametrize("seed", range(3))
def test_clean_input_gives_the_same_frame_on_every_path(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    n = 3000
    stamps = pd.Timestamp("2026-11-23T09:00Z").value + np.sort(rng.integers(0, 10**12, n))
    texts = pd.to_datetime(stamps, utc=True).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    keys = rng.choice(["a", "bb", "c-1"], n)
    values = rng.normal(size=n).round(6)
    data = "".join(f"{t} {k} {v}\n" for t, k, v in zip(texts, keys, values, strict=True))
    fast = RegexParser(KEYED).parse(data.encode())
    # A tab anywhere keeps the input off the CSV path; one bad line adds the regex path.
    slow = RegexParser(KEYED).parse(("bad\tline\n" + data).encode())
    for parsed in (fast, slow):
        assert times_of(parsed.frame) == (stamps // 1000 * 1000).tolist()
        assert parsed.frame["value"].tolist() == values.tolist()
        assert parsed.frame["key"].tolist() == keys.tolist()
    assert slow.samples[0].line == 1


def test_dense_bad_lines_take_one_general_call(monkeypatch: pytest.MonkeyPatch) -> None:
    # The CSV reader's cuts left hundreds of ranges of a few kB, at a fixed cost each.
    calls = []
    general = RegexParser._parse_lines
    monkeypatch.setattr(
        RegexParser, "_parse_lines", lambda self, *args: calls.append(1) or general(self, *args)
    )
    lines = [b"2026-11-23T09:00:00Z 1\n" if i % 100 else b"bad\n" for i in range(100_000)]
    parsed = RegexParser().parse(b"".join(lines))
    assert (parsed.lines, parsed.malformed, len(calls)) == (100_000, 1000, 1)
