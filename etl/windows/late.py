"""Late rows as dead letters: their line, its text, and how late they came.

A transform names its late rows by position in the tick's parsed frame. The regex
parser keeps lines' order, so the frame's rows are the block's lines that are neither
blank nor malformed: the row's line number and text follow, provided every malformed
line was sampled and the count agrees. Otherwise (a user's parser may reorder) the
letter, one for the block, names its first line and shows the rows' own fields.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from headrace.etl.parse.parser import Malformed, Parsed
from headrace.etl.parse.regex import RegexParser

MAX_PER_TICK = 1000  # letters kept per tick; the count of late rows stays exact
_LOW = bytes(range(33))  # a line of these bytes only is blank, as the parser counts it


def reason(lateness_ns: int) -> str:
    if lateness_ns < 0:
        return "late: no window can hold its time"
    return f"late by {lateness_ns / 1e9:.3f} s (its window had closed)"


def late_letters(
    data: bytes,
    first_line: int,
    source: str,
    parser: object,
    parsed: Parsed,
    rows: np.ndarray,
    lateness: np.ndarray,
) -> list[Malformed]:
    """Dead letters for the frame rows ``rows`` of ``parsed`` (parsed from ``data``)."""
    rows, lateness = rows[:MAX_PER_TICK], lateness[:MAX_PER_TICK]
    lines = _row_lines(data, first_line, parser, parsed)
    if lines is None:  # one letter for the block: letters are unique per line
        shown = "; ".join(_fields(parsed.frame.iloc[int(i)]) for i in rows[:5])
        text = f"{len(rows)} late rows of lines {first_line}+: {shown}"
        return [Malformed(first_line, reason(int(lateness.min())), text, source)]
    return [
        Malformed(lines[int(i)][0], reason(int(ns)), lines[int(i)][1], source)
        for i, ns in zip(rows, lateness, strict=True)
    ]


def _row_lines(
    data: bytes, first_line: int, parser: object, parsed: Parsed
) -> list[tuple[int, str]] | None:
    """(line number, text) of each row of the frame, or None if that cannot be known."""
    if not isinstance(parser, RegexParser) or len(parsed.samples) != parsed.malformed:
        return None
    bad = {s.line for s in parsed.samples}
    out = []
    for number, line in enumerate(data.split(b"\n")[:-1], first_line):
        if number in bad or not line.translate(None, _LOW):
            continue
        out.append((number, line.rstrip(b"\r").decode("utf-8", errors="replace")))
    return out if len(out) == len(parsed.frame) else None


def _fields(row: pd.Series) -> str:
    return " ".join(f"{k}={v}" for k, v in row.items())
