"""The built-in :class:`~headrace.etl.parse.parser.Parser`: log lines by a regex, vectorised.

No path loops over lines in Python:

* CSV: Arrow's CSV reader with a space delimiter, for patterns that are just
  space-separated ``\\S+`` fields (the default). It splits and converts in C on
  all cores, but rejects a whole range for one line it cannot convert, so it only
  ever returns ranges where every line parses; a rejected range is cut smaller until
  the bad lines sit in small ranges left to the general path.
* General, fast split: numpy finds all bytes <= 0x20 (:class:`headrace.etl.parse.lines.Lines`). A
  line whose only such bytes are single spaces between non-empty fields is "simple"
  and its fields become Arrow string views into the input buffer: no copy, no regex.
  For a simple line this split is exactly what the regex captures.
* General, regex: every other line (every line for a custom pattern) goes
  through Arrow ``extract_regex`` (RE2), or pandas ``str.extract`` when RE2
  rejects the pattern.

The general path converts field strings with :mod:`headrace.etl.parse.convert`: Arrow casts,
with pandas for the pieces Arrow rejects, giving the same value for what both
accept. So whichever path a line takes, its result is the same and does not
depend on its neighbours (tests check this against a per-line reference).

What counts as a line (``tests/test_corpus.py`` holds the cases):

* Only LF ends a line; a CR before it is dropped (CRLF). A CR elsewhere does not
  end a record: a line holding several CR-separated records is one malformed line,
  its reason says so. Line numbers stay those of the file, one outcome per number.
* Blank (whitespace-only) lines are skipped: numbered, not rows, not malformed,
  counted in ``Parsed.blank``.
* NUL bytes at the start or end of a line are dropped: the padding a crash leaves in
  a preallocated log must not take the next line with it. A NUL inside a line
  stays, and the line is malformed if it then does not parse. A UTF-8 byte order
  mark at the start of the file is dropped too.
* Values must be finite: "nan", "inf" and numbers beyond float64 are malformed, as
  one would turn a period's mean or sum (and every rollup over it) into NaN or inf.
* Times outside what datetime64[ns] holds (1677-09-21..2262-04-11) are malformed, and
  so are times more than ``max_future`` (default 1 h) ahead of the worker's clock: one
  line stamped 2099 would otherwise close every period up to 2099 and make each line
  after it late.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from headrace.etl import pandas_internals as internals
from headrace.etl.parse import convert
from headrace.etl.parse.lines import Lines, pieces, prepared, valid_utf8
from headrace.etl.parse.parser import Malformed, Parsed
from headrace.etl.parse.patterns import re2_accepts, split_fields

__all__ = ["DEFAULT_PATTERN", "TIME_FORMATS", "RegexParser"]

DEFAULT_PATTERN = r"^(?P<time>\S+)\s+(?P<value>\S+)\s*$"

TIME_FORMATS = ("ISO8601", "epoch", "epoch_ms")
_TEXT_MAX = 200  # characters of a malformed line kept in a sample
_FIELD_MAX = 60  # characters of a bad field quoted in a reason

_NO_MATCH, _BAD_TIME, _BAD_VALUE, _FUTURE = 1, 2, 3, 4

# CSV column types that parse a time field in the given format.
_CSV_TIME = {"ISO8601": pa.timestamp("ns", "UTC"), "epoch": pa.float64(), "epoch_ms": pa.float64()}
# Quoting and escapes off: a log line is split on single spaces and nothing else.
_CSV_PARSE = pacsv.ParseOptions(
    delimiter=" ", quote_char=False, escape_char=False, double_quote=False, ignore_empty_lines=False
)


_EMPTY: dict[pa.Schema, pa.Table] = {}  # a parse's empty table, by schema


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

    PIECE = 4 << 20  # bytes parsed at a time, to bound memory
    MIN_CSV = 64 << 10  # a range the CSV reader rejects is cut down to this size

    def __init__(
        self,
        pattern: str = DEFAULT_PATTERN,
        time_format: str = "ISO8601",
        keep: int = 100,
        max_future: str | pd.Timedelta | None = "1h",
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
        self.max_future = convert.future_bound(max_future)
        if time_format not in TIME_FORMATS and "%" not in time_format:
            raise ValueError(
                f"time_format {time_format!r} is neither one of {', '.join(TIME_FORMATS)} "
                "nor a strftime format"
            )
        self.pattern = pattern
        self.time_format = time_format
        self.keep = keep
        self.names = ["time", "value", "key"] if "key" in groups else ["time", "value"]
        self.fields = split_fields(pattern)
        self.use_re2 = re2_accepts(pattern)
        # The CSV reader splits like the regex when the fields are all we need.
        self.use_csv = self.fields is not None and set(self.fields) <= {"time", "value", "key"}
        self.schema = pa.schema(
            [("time", pa.timestamp("ns", "UTC")), ("value", pa.float64())]
            + ([("key", pa.large_string())] if "key" in self.names else [])
        )

    def __repr__(self) -> str:
        return f"RegexParser({self.pattern!r}, time_format={self.time_format!r})"

    def parse(self, data: bytes, first_line: int = 1, source: str = "") -> Parsed:
        data = prepared(data, first_line)
        plan: list[_Part | tuple[int, int]] = []
        latest = convert.latest_ns(self.max_future)  # one bound for every line of the call
        for pos, end in pieces(data, self.PIECE):
            self._plan(data, pos, end, plan, latest)
        parts = []
        for part in plan:
            if isinstance(part, tuple):
                raw = data[part[0] : part[1]]
                text = valid_utf8(raw)
                where = (first_line, source, text is not raw)
                part = self._parse_lines(Lines(text), where, latest)
            parts.append(part)
            first_line += part.nlines
        return self._assemble(parts)

    def _plan(
        self,
        data: bytes,
        pos: int,
        end: int,
        out: list[_Part | tuple[int, int]],
        latest: int,
        tried: bool = False,
        dense: bool = False,
    ) -> None:
        """Append to ``out`` the CSV parts of ``data[pos:end]`` and the (start, end) of the
        ranges left to the general path.

        The CSV reader parses clean ranges fast but rejects a range for one bad line,
        so a rejected range is cut in eight (halving would parse more bytes again)
        until the bad lines are confined to small ranges for the general path. Both
        paths give a line the same result. ``tried``: the CSV reader rejected this range
        already; ``dense``: leave all of it to the general path.

        Neighbouring general ranges are merged, up to ``PIECE``: a call costs about a
        millisecond whatever its size, and with one bad line in a hundred the ranges
        left were a few kB each (the parser ran ten times slower).
        """
        part = self._parse_csv(data, pos, end, latest) if self.use_csv and not tried else None
        if part is not None:
            out.append(part)
            return
        if self.use_csv and not dense and end - pos > self.MIN_CSV:
            cuts = list(pieces(data, (end - pos) // 8 + 1, pos, end))
            if len(cuts) > 1:
                # The first three cuts all rejected: bad lines are dense here, and the CSV
                # reader would only fail again on every smaller range.
                got: list[_Part | None] = []
                for a, b in cuts:
                    dense = len(got) >= 3 and all(p is None for p in got)
                    got.append(None if dense else self._parse_csv(data, a, b, latest))
                for (a, b), part in zip(cuts, got, strict=True):
                    if part is not None:
                        out.append(part)
                    else:
                        self._plan(data, a, b, out, latest, tried=True, dense=dense)
                return
        last = out[-1] if out else None
        if isinstance(last, tuple) and end - last[0] <= self.PIECE:
            out[-1] = (last[0], end)  # ranges come in order: the last one ends at ``pos``
        else:
            out.append((pos, end))

    def _typed(self, tables: list[pa.Table]) -> pa.Table:
        """``tables`` as one table of this parser's schema (none: an empty one)."""
        empty = _EMPTY.get(self.schema)
        if empty is None:  # made once: ~8 µs each time, a tenth of a stream-tick's parse
            empty = _EMPTY.setdefault(self.schema, self.schema.empty_table())
        return pa.concat_tables([empty, *tables])

    def _assemble(self, parts: list[_Part]) -> Parsed:
        table = self._typed([p.table for p in parts])
        samples = [s for p in parts for s in p.samples]
        lines = sum(p.lines for p in parts)
        return Parsed(
            frame=internals.frame(convert.columns(table)),
            lines=lines,
            malformed=sum(p.malformed for p in parts),
            samples=samples[max(len(samples) - self.keep, 0) :] if self.keep else [],
            blank=sum(p.nlines for p in parts) - lines,
        )

    def _parse_csv(self, data: bytes, pos: int, end: int, latest: int) -> _Part | None:
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
        values = table.column("value")
        if values.null_count or not pc.all(pc.is_finite(values)).as_py():
            return None  # nan, inf or beyond float64: the general path reports these lines
        if fmt != "ISO8601":
            times = table.column("time").combine_chunks()
            if fmt in ("epoch", "epoch_ms"):
                ns = convert.epoch_ns(times.to_numpy(), fmt)
            else:
                ns = convert.parse_times(times, fmt)
            if (ns == convert.NAT).any():
                return None
            table = table.set_column(table.schema.get_field_index("time"), "time", convert.ns(ns))
        if table.num_rows and pc.max(table.column("time").cast(pa.int64())).as_py() > latest:
            return None  # a time too far ahead: the general path names its line
        if "key" in self.names:
            keys = table.column("key")
            if len(keys) and pc.min(pc.binary_length(keys)).as_py() == 0:
                return None  # an empty key means two spaces in a row, which the regex rejects
        return _Part(table.select(self.names), table.num_rows, table.num_rows)

    def _parse_lines(self, lines: Lines, where: tuple[int, str, bool], latest: int) -> _Part:
        """The general path: any pattern, any line.

        ``where``: the first line's number, the source, and whether invalid UTF-8 was
        replaced; ``latest``: the newest time (ns) a line may have.
        """
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

        ns = convert.parse_times(cols["time"], self.time_format)
        values = convert.parse_values(cols["value"])
        bad_time, bad_value, ahead = ns == convert.NAT, ~np.isfinite(values), ns > latest
        ok = ~(bad_time | ahead | bad_value)
        code = np.where(lines.blank, 0, _NO_MATCH).astype(np.int8)
        code[idx] = np.select(
            [bad_time, ahead, bad_value], [_BAD_TIME, _FUTURE, _BAD_VALUE], 0
        ).astype(np.int8)
        bad = np.flatnonzero(code)
        columns = {"time": convert.ns(ns[ok]), "value": pa.array(values[ok])}
        if "key" in self.names:
            columns["key"] = cols["key"].filter(pa.array(ok))
        return _Part(
            table=pa.table(columns),
            lines=int(lines.n - lines.blank.sum()),
            nlines=lines.n,
            malformed=len(bad),
            samples=self._samples(lines, bad, code, idx, cols, where),
        )

    def _regex(self, lines: Lines, todo: np.ndarray) -> tuple[np.ndarray, dict[str, pa.Array]]:
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
        lines: Lines,
        bad: np.ndarray,
        code: np.ndarray,
        idx: np.ndarray,
        cols: dict[str, pa.Array],
        where: tuple[int, str, bool],
    ) -> list[Malformed]:
        """Samples of the last ``keep`` bad lines, their reasons as precise as can be told."""
        first_line, source, replaced = where
        out = []
        for i in bad[max(len(bad) - self.keep, 0) :].tolist() if self.keep else []:  # <= keep lines
            text = lines.text(np.array([i]))[0].as_py()
            details = []
            if code[i] == _NO_MATCH:
                reason = "does not match pattern"
            elif code[i] == _FUTURE:
                got = cols["time"][int(np.searchsorted(idx, i))].as_py()
                reason = (
                    f"time {got[:_FIELD_MAX]!r} is more than {convert.span(self.max_future)} "
                    "ahead of the clock (max_future)"
                )
            else:
                j = int(np.searchsorted(idx, i))
                what = "time" if code[i] == _BAD_TIME else "value"
                got = cols[what][j].as_py()
                reason = f"bad {what} {got[:_FIELD_MAX]!r}"
                fmt = self.time_format
                why = (
                    convert.time_problem(got, fmt) if what == "time" else convert.value_problem(got)
                )
                details += [why] if why else []
            if "\r" in text:
                details.append("a CR inside: only LF ends a line")
            if "\x00" in text:
                details.append("NUL bytes inside")
            if replaced and "\ufffd" in text:
                details.append("invalid UTF-8")
            if len(text) > _TEXT_MAX:
                details.append(f"{int(lines.ends[i] - lines.starts[i])} bytes long")
            reason += f" ({'; '.join(details)})" if details else ""
            out.append(Malformed(first_line + i, reason, text[:_TEXT_MAX], source))
        return out


def _concat(arrays: list[pa.Array]) -> pa.Array:
    if not arrays:
        return pa.array([], pa.large_string())
    return arrays[0] if len(arrays) == 1 else pa.concat_arrays(arrays)
