"""Line splitting of a byte buffer with numpy, for the parser's general path.

:class:`Lines` finds every line and its bytes <= 0x20 in a few vectorised passes,
and builds Arrow string views into the buffer so that fields of simple lines come
out without a copy or a regex. Kept apart from :mod:`headrace.etl.parse.regex` because it is
pure buffer arithmetic (the string-view layout) and knows nothing of patterns.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["Lines", "drop_nul_padding", "valid_utf8"]


def valid_utf8(data: bytes) -> bytes:
    """``data`` as valid UTF-8, so that views into it are valid Arrow strings."""
    if data.isascii():
        return data
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        # Invalid bytes become U+FFFD; "\n" is never part of an invalid sequence,
        # so line boundaries and numbers are unchanged.
        return data.decode("utf-8", errors="replace").encode("utf-8")
    return data


BOM = b"\xef\xbb\xbf"


def prepared(data: bytes, first_line: int) -> bytes:
    """A chunk's bytes as the parser reads them: without the file's byte order mark (its
    first line only) and without NUL padding."""
    data = bytes(data)
    if first_line == 1 and data.startswith(BOM):
        data = data[len(BOM) :]
    return drop_nul_padding(data)  # one memchr pass when there is no NUL


def drop_nul_padding(data: bytes) -> bytes:
    """``data`` without the runs of NUL bytes at the start or end of a line.

    Such runs are the padding a crash leaves in a preallocated log; NULs inside a line
    stay. A run ends a line when LF, CRLF or the end of ``data`` follows it. Vectorised
    over the span from the first NUL's line to the last one's: a block of NULs costs
    little, NULs spread over a whole 37 MB chunk ~0.3 s (a regex took 0.7 s for one NUL).
    """
    first = data.find(b"\x00")
    if first < 0:
        return data
    lo = data.rfind(b"\n", 0, first) + 1
    hi = data.find(b"\n", data.rfind(b"\x00")) + 1 or len(data)
    buf = np.frombuffer(data, np.uint8, hi - lo, lo)
    n = len(buf)
    edge = np.diff((buf == 0).view(np.int8), prepend=np.int8(0), append=np.int8(0))
    starts, ends = np.flatnonzero(edge == 1), np.flatnonzero(edge == -1)  # runs [start, end)

    def at(i: np.ndarray) -> np.ndarray:  # the span starts and ends a line: beyond it, LF
        return np.where((i >= 0) & (i < n), buf[np.clip(i, 0, n - 1)], 0x0A)

    after = at(ends)
    drop = (at(starts - 1) == 0x0A) | (after == 0x0A) | ((after == 0x0D) & (at(ends + 1) == 0x0A))
    if not drop.any():
        return data
    inside = np.zeros(n + 1, np.int8)  # +1 where a dropped run starts, -1 after it
    inside[starts[drop]] = 1
    inside[ends[drop]] = -1
    keep = np.cumsum(inside[:-1], dtype=np.int8) == 0  # runs do not overlap: 0 or 1
    view = memoryview(data)
    return b"".join([view[:lo], buf[keep].tobytes(), view[hi:]])


class Lines:
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
        # A line with fewer low bytes than separators would index before the first one
        # (IndexError on a chunk of one short line): clipped, as it is not simple anyway.
        at = [np.maximum(top - nsep + j, 0) for j in range(nsep)]
        seps = [self.low[a] for a in at]
        for a in at:
            simple &= self.lowb[a] == 0x20
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


def pieces(
    data: bytes, size: int, pos: int = 0, end: int | None = None
) -> Iterator[tuple[int, int]]:
    """Consecutive (start, end) of ``data[pos:end]``, about ``size`` bytes, cut after "\\n"."""
    end = len(data) if end is None else end
    while pos < end:
        cut = data.find(b"\n", pos + size - 1, end)
        stop = end if cut < 0 else cut + 1
        yield pos, stop
        pos = stop
