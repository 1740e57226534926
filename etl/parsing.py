"""Vectorised log-line parser: bytes of complete lines -> contract frame.

No path loops over lines in Python:

* CSV: Arrow's CSV reader with a space delimiter, for patterns that are just
  space-separated ``\\S+`` fields (the default). It splits and converts in C on
  all cores, but rejects a whole range for one line it cannot convert, so it only
  ever returns ranges where every line parses; a rejected range is cut smaller until
  the bad lines sit in small ranges left to the general path.
* General, fast split: numpy finds all bytes <= 0x20. A line whose only such
  bytes are single spaces between non-empty fields is "simple" and its fields
  become Arrow string views into the input buffer: no copy, no regex. For a
  simple line this split is exactly what the regex captures.
* General, regex: every other line (every line for a custom pattern) goes
  through Arrow ``extract_regex`` (RE2), or pandas ``str.extract`` when RE2
  rejects the pattern.

The general path converts field strings with Arrow casts, which fail a whole
array for one bad element; a failing array is bisected and the small pieces that
still fail go to pandas. Arrow accepts a subset of what pandas accepts and gives
the same value for it, so whichever path a line takes, its result is the same and
does not depend on its neighbours (tests check this against a per-line reference).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

__all__ = ["DEFAULT_PATTERN", "Malformed", "Parsed", "RegexParser"]

DEFAULT_PATTERN = r"^(?P<time>\S+)\s+(?P<value>\S+)\s*$"

TIME_FORMATS = ("ISO8601", "epoch", "epoch_ms")
_TEXT_MAX = 200  # characters of a malformed line kept in a sample
_FIELD_MAX = 60  # characters of a bad field quoted in a reason
_NAT = np.iinfo(np.int64).min
_PIECE = 4 << 20  # bytes parsed at a time, to bound memory
_MIN_CSV = 64 << 10  # a range the CSV reader rejects is cut down to this size
# Below this size a failing Arrow cast is not bisected further but left to pandas.
_MIN_BISECT = 1024

# A pattern made only of whitespace-separated non-space fields can use the fast split.
_FIELD_RE = r"\(\?P<(\w+)>(?:\\S\+|\[\^ \]\+|\[\^\\s\]\+)\)"
_SEP_RE = r"(?:\\s\+| \+| )"
_SPLITTABLE = re.compile(rf"\^{_FIELD_RE}((?:{_SEP_RE}{_FIELD_RE})*)(?:\\s\*)?\$")

_NO_MATCH, _BAD_TIME, _BAD_VALUE = 1, 2, 3

# CSV column types that parse a time field in the given format.
_CSV_TIME = {"ISO8601": pa.timestamp("ns", "UTC"), "epoch": pa.float64(), "epoch_ms": pa.float64()}
# Quoting and escapes off: a log line is split on single spaces and nothing else.
_CSV_PARSE = pacsv.ParseOptions(
    delimiter=" ", quote_char=False, escape_char=False, double_quote=False, ignore_empty_lines=False
)


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
    """Result of parsing one block of lines; ``len(frame) + malformed == lines``."""

    frame: pd.DataFrame
    lines: int
    malformed: int
    samples: list[Malformed] = field(default_factory=list)


def _split_fields(pattern: str) -> tuple[str, ...] | None:
    """Field names in order if the fast split reproduces ``pattern``, else None."""
    m = _SPLITTABLE.fullmatch(pattern)
    if m is None:
        return None
    return (m.group(1), *re.findall(_FIELD_RE, m.group(2)))


def _re2_accepts(pattern: str) -> bool:
    try:
        pc.extract_regex(pa.array([""], pa.large_string()), pattern)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False
    return True


@dataclass
class _Part:
    """Parse result of one range of the input, before the frame is built."""

    table: pa.Table  # good rows: time (timestamp[ns, UTC]), value (float64), key
    lines: int  # non-blank lines
    nlines: int  # all lines, to number the next range's
    malformed: int = 0
    samples: list[Malformed] = field(default_factory=list)


class RegexParser:
    """Parse log lines with named groups ``time``, ``value`` and optionally ``key``.

    ``time_format`` is "ISO8601", "epoch" (float seconds), "epoch_ms" or a strftime
    format; times without a zone are taken as UTC. The instance only holds plain
    attributes, so it pickles for shipping to Dask workers.
    """

    def __init__(
        self, pattern: str = DEFAULT_PATTERN, time_format: str = "ISO8601", keep: int = 5
    ) -> None:
        try:
            groups = re.compile(pattern).groupindex
        except re.error as exc:
            raise ValueError(f"invalid regex {pattern!r}: {exc}") from None
        missing = [g for g in ("time", "value") if g not in groups]
        if missing:
            raise ValueError(f"pattern {pattern!r} lacks named group(s) {', '.join(missing)}")
        if keep < 0:
            raise ValueError(f"keep must be >= 0, got {keep}")
        if time_format not in TIME_FORMATS and "%" not in time_format:
            raise ValueError(
                f"time_format {time_format!r} is neither one of {', '.join(TIME_FORMATS)} "
                "nor a strftime format"
            )
        self.pattern = pattern
        self.time_format = time_format
        self.keep = keep
        self.names = ["time", "value", "key"] if "key" in groups else ["time", "value"]
        self.fields = _split_fields(pattern)
        self.use_re2 = _re2_accepts(pattern)
        # The CSV reader splits like the regex when the fields are all we need.
        self.use_csv = self.fields is not None and set(self.fields) <= {"time", "value", "key"}
        self.schema = pa.schema(
            [("time", pa.timestamp("ns", "UTC")), ("value", pa.float64())]
            + ([("key", pa.large_string())] if "key" in self.names else [])
        )

    def __repr__(self) -> str:
        return f"RegexParser({self.pattern!r}, time_format={self.time_format!r})"

    def __call__(self, data: bytes, first_line: int = 1, source: str = "") -> Parsed:
        data = bytes(data)
        parts: list[_Part] = []
        for pos, end in _pieces(data, _PIECE):
            first_line += self._parse_range(data, pos, end, first_line, source, parts)
        return self._assemble(parts)

    def _parse_range(
        self, data: bytes, pos: int, end: int, line: int, source: str, out: list[_Part]
    ) -> int:
        """Append the parts of ``data[pos:end]`` to ``out``; return its number of lines.

        The CSV reader parses clean ranges fast but rejects a range for one bad line,
        so a rejected range is cut in eight (halving would parse more bytes again)
        until the bad lines are confined to small ranges for the general path. Both
        paths give a line the same result.
        """
        part = self._parse_csv(data, pos, end) if self.use_csv else None
        if part is not None:
            out.append(part)
            return part.nlines
        if self.use_csv and end - pos > _MIN_CSV:
            cuts = list(_pieces(data, (end - pos) // 8 + 1, pos, end))
            if len(cuts) > 1:
                n = 0
                for a, b in cuts:
                    n += self._parse_range(data, a, b, line + n, source, out)
                return n
        out.append(self._parse_lines(_Lines(_valid_utf8(data[pos:end])), line, source))
        return out[-1].nlines

    def _assemble(self, parts: list[_Part]) -> Parsed:
        table = pa.concat_tables([self.schema.empty_table(), *(p.table for p in parts)])
        samples = [s for p in parts for s in p.samples]
        return Parsed(
            frame=table.to_pandas(),  # one copy into pandas; the key becomes "str"
            lines=sum(p.lines for p in parts),
            malformed=sum(p.malformed for p in parts),
            samples=samples[max(len(samples) - self.keep, 0) :] if self.keep else [],
        )

    def _parse_csv(self, data: bytes, pos: int, end: int) -> _Part | None:
        """The fast path: None unless the CSV reader parses every line of the range.

        With a space delimiter it splits a line as the regex would when the line is
        simple, which its parse checks, provided no line holds other whitespace: a
        tab or form feed would be kept inside a key, a CR that is not part of CRLF
        would end a row, and a BOM at the start would be dropped.
        """
        if (
            data.startswith(b"\xef\xbb\xbf", pos)
            or data.find(b"\t", pos, end) >= 0
            or data.find(b"\x0c", pos, end) >= 0
            or (
                data.find(b"\r", pos, end) >= 0
                and data.count(b"\r", pos, end) != data.count(b"\r\n", pos, end)
            )
        ):
            return None
        fmt = self.time_format
        types = {"time": _CSV_TIME.get(fmt, pa.string()), "value": pa.float64()}
        try:
            table = pacsv.read_csv(
                pa.py_buffer(memoryview(data)[pos:end]),
                read_options=pacsv.ReadOptions(column_names=list(self.fields)),
                parse_options=_CSV_PARSE,
                convert_options=pacsv.ConvertOptions(
                    column_types={f: types.get(f, pa.large_string()) for f in self.fields},
                    null_values=[],  # "NA" or "" must fail, not become null
                    strings_can_be_null=False,
                ),
            )
        except pa.ArrowInvalid:  # a line with more or fewer fields, or one that did not convert
            return None
        if pc.any(pc.is_nan(table.column("value"))).as_py():
            return None  # the general path reports these lines
        if fmt != "ISO8601":
            times = table.column("time").combine_chunks()
            if fmt in ("epoch", "epoch_ms"):
                ns = _epoch_ns(times.to_numpy(), fmt)
            else:
                ns = _parse_times(times, fmt)
            if (ns == _NAT).any():
                return None
            table = table.set_column(table.schema.get_field_index("time"), "time", _ns(ns))
        if "key" in self.names:
            keys = table.column("key")
            if len(keys) and pc.min(pc.binary_length(keys)).as_py() == 0:
                return None  # an empty key means two spaces in a row, which the regex rejects
        return _Part(table.select(self.names), table.num_rows, table.num_rows)

    def _parse_lines(self, lines: _Lines, first_line: int, source: str) -> _Part:
        """The general path: any pattern, any line."""
        groups: list[tuple[np.ndarray, dict[str, pa.Array]]] = []
        pending = ~lines.blank
        if self.fields is not None and pending.any():
            simple, fields = lines.split(len(self.fields))
            groups.append((simple, {n: fields[self.fields.index(n)] for n in self.names}))
            pending[simple] = False
        if pending.any():
            groups.append(self._regex(lines, np.flatnonzero(pending)))

        idx = np.concatenate([np.empty(0, np.int64), *(g[0] for g in groups)])
        cols = {n: _concat([g[1][n] for g in groups]) for n in self.names}
        if len(groups) > 1:  # restore file order across the two ways of splitting
            order = np.argsort(idx, kind="stable")
            idx = idx[order]
            cols = {n: c.take(pa.array(order)) for n, c in cols.items()}
        if cols["time"].null_count:  # lines the regex did not match
            matched = pc.is_valid(cols["time"])
            idx = idx[matched.to_numpy(zero_copy_only=False)]
            cols = {n: c.filter(matched) for n, c in cols.items()}

        ns = _parse_times(cols["time"], self.time_format)
        values = _parse_values(cols["value"])
        bad_time, bad_value = ns == _NAT, np.isnan(values)
        ok = ~(bad_time | bad_value)
        code = np.where(lines.blank, 0, _NO_MATCH).astype(np.int8)
        code[idx] = np.where(bad_time, _BAD_TIME, np.where(bad_value, _BAD_VALUE, 0))
        bad = np.flatnonzero(code)
        columns = {"time": _ns(ns[ok]), "value": pa.array(values[ok])}
        if "key" in self.names:
            columns["key"] = cols["key"].filter(pa.array(ok))
        return _Part(
            table=pa.table(columns),
            lines=int(lines.n - lines.blank.sum()),
            nlines=lines.n,
            malformed=len(bad),
            samples=self._samples(lines, bad, code, idx, cols, first_line, source),
        )

    def _regex(self, lines: _Lines, todo: np.ndarray) -> tuple[np.ndarray, dict[str, pa.Array]]:
        """Fields of lines ``todo``; null where the line does not match."""
        text = lines.text(todo)
        if self.use_re2:
            found = pc.extract_regex(text, self.pattern)
            cols = {n: pc.struct_field(found, n) for n in self.names}
        else:
            series = pd.Series(text.to_pandas().to_numpy(), dtype=object)
            found = series.str.extract(self.pattern, expand=True)
            with warnings.catch_warnings():  # "has match groups": wanted, only hits are used
                warnings.simplefilter("ignore", UserWarning)
                hit = series.str.contains(self.pattern, regex=True).to_numpy(bool)
            cols = {}
            for n in self.names:
                col = found[n].where(found[n].notna(), "").astype(str).to_numpy(object)
                cols[n] = pa.array(col, pa.large_string(), mask=~hit)
        return todo, {n: c.cast(pa.large_string()) for n, c in cols.items()}

    def _samples(
        self,
        lines: _Lines,
        bad: np.ndarray,
        code: np.ndarray,
        idx: np.ndarray,
        cols: dict[str, pa.Array],
        first_line: int,
        source: str,
    ) -> list[Malformed]:
        out = []
        for i in bad[max(len(bad) - self.keep, 0) :].tolist() if self.keep else []:  # <= keep lines
            text = lines.text(np.array([i]))[0].as_py()
            if code[i] == _NO_MATCH:
                reason = "does not match pattern"
            else:
                j = int(np.searchsorted(idx, i))
                what = "time" if code[i] == _BAD_TIME else "value"
                reason = f"bad {what} {cols[what][j].as_py()[:_FIELD_MAX]!r}"
            out.append(Malformed(first_line + i, reason, text[:_TEXT_MAX], source))
        return out


def _pieces(
    data: bytes, size: int, pos: int = 0, end: int | None = None
) -> Iterator[tuple[int, int]]:
    """Consecutive (start, end) of ``data[pos:end]``, about ``size`` bytes, cut after "\\n"."""
    end = len(data) if end is None else end
    while pos < end:
        cut = data.find(b"\n", pos + size - 1, end)
        stop = end if cut < 0 else cut + 1
        yield pos, stop
        pos = stop


def _ns(ns: np.ndarray) -> pa.Array:
    """int64 ns since the epoch as an Arrow timestamp[ns, UTC] array (no copy)."""
    return pa.array(ns, pa.int64()).view(pa.timestamp("ns", "UTC"))


def _valid_utf8(data: bytes) -> bytes:
    if data.isascii():
        return data
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        # Invalid bytes become U+FFFD; "\n" is never part of an invalid sequence,
        # so line boundaries and numbers are unchanged.
        return data.decode("utf-8", errors="replace").encode("utf-8")
    return data


class _Lines:
    """Line boundaries of a buffer and the positions of its bytes <= 0x20."""

    def __init__(self, data: bytes) -> None:
        if data and not data.endswith(b"\n"):
            data += b"\n"
        self.data = data
        # Views read 12 bytes at a time; tiny inputs are padded so there is room.
        self.vbuf = data if len(data) >= 16 else data.ljust(16, b"\0")
        # Overlapping 4-byte view: u4[i] is bytes i..i+3, for building string views.
        self.u4 = np.ndarray((len(self.vbuf) - 3,), "<u4", buffer=self.vbuf, strides=(1,))
        buf = np.frombuffer(data, np.uint8)
        self.low = np.flatnonzero(buf <= 0x20)  # whitespace and control bytes
        self.lowb = buf[self.low]
        self.k = np.flatnonzero(self.lowb == 0x0A)  # index into low of each newline
        nl = self.low[self.k]
        self.n = len(nl)
        self.starts = np.empty(self.n, np.int64)
        self.starts[:1] = 0
        self.starts[1:] = nl[:-1] + 1
        self.nlow = np.diff(self.k, prepend=-1) - 1  # low bytes inside each line
        # A trailing "\r" is dropped so CRLF files behave like LF files.
        last = self.low[self.k - 1]
        self.cr = (self.nlow > 0) & (self.lowb[self.k - 1] == 0x0D) & (last == nl - 1)
        self.ends = nl - self.cr
        self.nlow -= self.cr
        self.blank = self.nlow == self.ends - self.starts  # only low bytes: maybe blank
        if self.blank.any():
            cand = np.flatnonzero(self.blank)
            text = self.text(cand)
            space = pc.or_(pc.equal(pc.utf8_length(text), 0), pc.ascii_is_space(text))
            self.blank[cand] = space.to_numpy(zero_copy_only=False)

    def split(self, nfields: int) -> tuple[np.ndarray, list[pa.Array]]:
        """Simple lines (only single spaces between non-empty fields) and their fields."""
        nsep = nfields - 1
        simple = self.nlow == nsep
        top = self.k - self.cr  # index into low of the line end
        seps = [self.low[top - nsep + j] for j in range(nsep)]
        for j in range(nsep):
            simple &= self.lowb[top - nsep + j] == 0x20
        firsts = [self.starts, *(s + 1 for s in seps)]
        lasts = [*seps, self.ends]
        for a, b in zip(firsts, lasts, strict=True):
            simple &= b > a
        rows = np.flatnonzero(simple)
        fields = [self.views(a[rows], (b - a)[rows]) for a, b in zip(firsts, lasts, strict=True)]
        return rows, fields

    def text(self, rows: np.ndarray) -> pa.Array:
        return self.views(self.starts[rows], self.ends[rows] - self.starts[rows])

    def views(self, start: np.ndarray, length: np.ndarray) -> pa.Array:
        """Substrings of the buffer as a large_string array, built from string views.

        A view is 16 bytes: the length, then either the string inline (<= 12 bytes)
        or a 4-byte prefix, buffer index 0 and offset. Building them takes a few numpy
        ops; Arrow's cast to large_string then gathers the bytes in C.
        """
        n = len(start)
        v = np.zeros((n, 4), np.uint32)
        v[:, 0] = length
        tail = start > len(self.vbuf) - 12  # a 12-byte read would run off the end
        safe = np.where(tail, 0, start)
        v[:, 1] = self.u4[safe]  # prefix, or the first inline bytes
        short = length <= 12
        every = bool(short.all())
        if every or short.any():
            rows = slice(None) if every else np.flatnonzero(short)
            v[rows, 2] = self.u4[safe[rows] + 4]
            v[rows, 3] = self.u4[safe[rows] + 8]
            v.view(np.uint64)[rows] &= _INLINE_MASK[length[rows]]
        if not every:
            rows = slice(None) if not short.any() else np.flatnonzero(~short)
            v[rows, 3] = start[rows]
        for i in np.flatnonzero(tail).tolist():  # at most 12 rows, all short
            piece = self.vbuf[start[i] : start[i] + length[i]].ljust(12, b"\0")
            v[i, 1:] = np.frombuffer(piece, np.uint32)
        views = pa.Array.from_buffers(
            pa.string_view(), n, [None, pa.py_buffer(v), pa.py_buffer(self.vbuf)]
        )
        return views.cast(pa.large_string())


def _inline_masks() -> np.ndarray:
    # Keep the 4-byte length and the first L bytes of the inline string.
    masks = np.zeros((13, 2), np.uint64)
    for length in range(13):
        full = (1 << (32 + 8 * length)) - 1
        masks[length] = full & (2**64 - 1), full >> 64
    return masks


_INLINE_MASK = _inline_masks()


def _concat(arrays: list[pa.Array]) -> pa.Array:
    if not arrays:
        return pa.array([], pa.large_string())
    return arrays[0] if len(arrays) == 1 else pa.concat_arrays(arrays)


def _cast(arr: pa.Array, to: pa.DataType, fallback) -> np.ndarray:
    """Arrow cast as numpy; pieces Arrow rejects go to ``fallback`` (bisecting)."""
    try:
        out = pc.cast(arr, to)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        if len(arr) <= _MIN_BISECT:
            return fallback(arr)
        mid = len(arr) // 2
        return np.concatenate([_cast(arr[:mid], to, fallback), _cast(arr[mid:], to, fallback)])
    if pa.types.is_timestamp(to):
        out = out.cast(pa.int64())
    return out.to_numpy(zero_copy_only=False)


def _pandas_numbers(arr: pa.Array) -> np.ndarray:
    series = pd.Series(arr.to_pandas().to_numpy(), dtype=object)
    return pd.to_numeric(series, errors="coerce").to_numpy(np.float64, na_value=np.nan)


def _to_ns(times: pd.DatetimeIndex) -> np.ndarray:
    """Nanoseconds since the epoch; NaT where the time does not fit in ns."""
    scale = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}[times.unit]
    raw = times.asi8
    ok = (raw != _NAT) & (np.abs(raw) <= np.iinfo(np.int64).max // scale)
    return np.where(ok, raw * np.where(ok, scale, 0), _NAT)


def _pandas_times(fmt: str):
    def parse(arr: pa.Array) -> np.ndarray:
        texts = arr.to_pandas().to_numpy(object)
        times = pd.DatetimeIndex(pd.to_datetime(texts, format=fmt, utc=True, errors="coerce"))
        ns = _to_ns(times)
        if fmt == "ISO8601":
            # pandas also reads words such as "now" and "today"; ISO times start with a digit
            digit = pc.match_substring_regex(arr, r"^[0-9]").to_numpy(zero_copy_only=False)
            ns[~digit] = _NAT
        return ns

    return parse


def _parse_times(arr: pa.Array, fmt: str) -> np.ndarray:
    """int64 ns since the epoch (UTC), NaT where unparseable."""
    if fmt == "ISO8601":
        return _cast(arr, pa.timestamp("ns", "UTC"), _pandas_times(fmt))
    if fmt in ("epoch", "epoch_ms"):
        return _epoch_ns(_cast(arr, pa.float64(), _pandas_numbers), fmt)
    return _pandas_times(fmt)(arr)


def _epoch_ns(numbers: np.ndarray, fmt: str) -> np.ndarray:
    # Rounded to the microsecond: near today's epoch a float64 holds no finer, and
    # without rounding "…22.25" would come out as …22.249999872.
    us = np.rint(numbers * (1e6 if fmt == "epoch" else 1e3))
    ok = np.isfinite(us) & (np.abs(us) < 2.0**63 / 1000)
    return np.where(ok, np.where(ok, us, 0).astype(np.int64) * 1000, _NAT)


def _parse_values(arr: pa.Array) -> np.ndarray:
    """float64, NaN where unparseable (a literal "nan" counts as unparseable too)."""
    return _cast(arr, pa.float64(), _pandas_numbers)
