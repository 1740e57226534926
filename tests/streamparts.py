"""Parts of test streams: log lines to feed them, and a parser that fails."""

from __future__ import annotations

import pandas as pd


def log_lines(n: int, start: int = 0) -> bytes:
    """``n`` log lines one second apart, numbered from ``start``: ``<ISO time> <i>``."""
    base = pd.Timestamp("2026-11-23T09:00:00Z")
    return b"".join(
        f"{(base + pd.Timedelta(seconds=i)).isoformat()} {i}\n".encode()
        for i in range(start, start + n)
    )


class Exploding:
    """A parser whose own code raises (not a line it reports as malformed)."""

    def parse(self, data: bytes, first_line: int = 1, source: str = "") -> object:
        raise RuntimeError("this parser fails on every line")
