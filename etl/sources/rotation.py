"""The cursor logic every source shares: first reads, appended bytes, identity, rotation.

:func:`advance` is one tick's read, written once for every source over the two
primitives of :class:`headrace.etl.sources.base.Files` (stat, read from an offset).

**Most ticks.** A stat (FTP: ``SIZE`` and ``MDTM``, no data transfer). Nothing new:
no transfer at all. Appended bytes: one transfer, from 64 bytes before the cursor;
those 64 bytes (:attr:`Cursor.fingerprint`) check that the file is still the one
being read, the rest is new. Where a stat costs a request (``Files.reads_first``), a
file that keeps growing is read first, without a stat; its first tick without new
bytes, or anything that looks off, goes on as above.

**Something looks off** when the file is smaller than the cursor, those 64 bytes
differ, its inode changed (local files), or its modification time changed while
its size did not (a same-size replacement). The file's first bytes
(:attr:`Cursor.head`, up to 1,024) then decide whether it is still the same file.
``MDTM`` has one-second resolution: on FTP, a same-size replacement within the same
second as the file's previous change shows only when the file changes again.

**Rotation.** When the file at the path is not the one the cursor was reading
(renamed and re-created, or copied and truncated), the rotated copy
(``TailOptions.rotated``, ``{name}.1`` by default; a shell pattern such as
``{name}-*`` is the newest matching file that begins as the file did) is looked for.
If its first bytes and its 64 bytes before the cursor are the cursor's, the rest of it
is read, on later ticks too, until the new file has bytes: a writer that has written
to the new file writes no more to the old one, so what is read of the old one after
that is all of it. Its last line, complete or not, is then emitted, and the next read
starts the new file at byte 0 (``Chunk.reset == "rotated"``, line numbers from 1).
Without a matching rotated copy, the new file is read from byte 0 at once, with a
WARNING when the file was replaced (what the old file had after the cursor was not
read) or an INFO line when it was truncated in place.

**Replays.** A chunk never holds lines of two files, and the old file's rest always
comes before the new file: a tick replayed with ``limit`` (the offset its first
attempt ended at) reads the same file again, and ``limit`` is an offset in that file.
"""

from __future__ import annotations

import logging
import re
from dataclasses import replace

from headrace.etl.sources.base import (
    CURRENT,
    FINISHED,
    NEW,
    ROTATED,
    BeyondEnd,
    Chunk,
    Cursor,
    Files,
    Stat,
    TailOptions,
)

__all__ = ["FINGERPRINT_SIZE", "HEAD_SIZE", "advance"]

log = logging.getLogger(__name__)

HEAD_SIZE = 1024  # bytes of a file's beginning that identify it
FINGERPRINT_SIZE = 64  # bytes before the cursor re-read with every transfer
START_WINDOW = 64 << 10  # start: end looks this far back for the last line boundary
CANDIDATES = 10  # files matching a rotated pattern whose first bytes are compared


def advance(
    cursor: Cursor,
    limit: int | None,
    files: Files,
    path: str,
    rotated: str | None,
    options: TailOptions,
    display: str,
) -> Chunk:
    """Read what follows ``cursor`` in the file at ``path`` (``rotated``: its old copy).

    With ``limit``, nothing at or past that byte offset of the chunk's file is
    consumed: replaying a tick gives the same chunk again.
    """
    return _Read(files, path, rotated, options, display, limit).run(cursor)


def _kind(c: Cursor, st: Stat | None, shrank: bool) -> str:
    """'truncated' (the same file, cut) or 'rotated' (another file), as far as stats tell.

    Without inodes (FTP) a file that shrank was truncated: a smaller new file and a
    file truncated and written again look the same.
    """
    if st is not None and st.inode and c.inode:
        return "truncated" if st.inode == c.inode else "rotated"
    return "truncated" if shrank and st is not None else "rotated"


def _fingerprint(c: Cursor) -> bytes:
    return c.fingerprint[-c.offset :] if c.offset else b""


class _Read:
    """One call of :func:`advance`: counts its transfers, builds its chunk."""

    def __init__(
        self,
        files: Files,
        path: str,
        rotated: str | None,
        options: TailOptions,
        display: str,
        limit: int | None,
    ) -> None:
        self.files, self.path, self.rotated = files, path, rotated
        self.options, self.display, self.limit = options, display, limit
        self.transfers = 0
        self._copy: tuple[str | None] | None = None  # the rotated copy, once looked for

    def get(self, path: str, offset: int, size: int | None = None) -> bytes:
        self.transfers += 1
        return self.files.read(path, offset, size)

    def stat_path(self) -> Stat:
        """The file at the path; raises the source's own error if it is missing."""
        st = self.files.stat(self.path)
        assert st is not None  # required: a missing file raised
        return st

    def take(self, new: bytes, offset: int) -> bytes:
        """``new`` (bytes from ``offset``) without what is at or past the limit."""
        return new if self.limit is None else new[: max(0, self.limit - offset)]

    def chunk(self, data: bytes, first_line: int, cursor: Cursor, reset: str | None = None):
        return Chunk(data, first_line, cursor, self.transfers, reset, self.display)

    def run(self, c: Cursor) -> Chunk:
        first = getattr(self.files, "reads_first", None)
        if c.phase == CURRENT and c.offset and not c.mtime and first and first(self.path):
            grown = self.grown(c)  # no MDTM at the last read: the file grew then
            if grown is not None:
                return grown
        grown_past = c.offset if c.phase == CURRENT else None
        st = self.files.stat(self.path, required=False, grown_past=grown_past)
        if c.phase == ROTATED and self.rotated is not None:
            return self.finish_rotated(c, st)
        if c.phase == ROTATED:  # rotated: none since the cursor was kept
            return self.restart(c, "rotated", st)
        if st is None:
            if c.phase == CURRENT and self.rotated is not None and (c.offset or c.tail):
                # Renamed, and the new file not created yet: the old one may be rotated.
                return self.changed(c, "rotated", None)
            st = self.stat_path()
        if c.phase == FINISHED:
            return self.restart(c, "rotated", st, quiet=True)
        if c.phase == NEW:
            return self.first(st)
        return self.current(c, st)

    # -- the file the cursor reads is at the path

    def current(self, c: Cursor, st: Stat) -> Chunk:
        moved = bool(st.inode and c.inode and st.inode != c.inode)
        if st.size < c.offset:
            return self.changed(c, _kind(c, st, True), st)
        if st.size == c.offset:
            touched = bool(st.mtime and c.mtime and st.mtime != c.mtime)
            if (moved or touched) and not self.same_file(c):
                return self.changed(c, _kind(c, st, False), st)
            # Nothing new: no data transfer at all, which is what most ticks are.
            return self.chunk(b"", c.line + 1, replace(c, mtime=st.mtime, inode=st.inode))
        fp = _fingerprint(c)
        try:
            # Re-read the fingerprint bytes with the new ones: one transfer both checks
            # that this is still the same file and returns the new data.
            got = self.get(self.path, c.offset - len(fp))
        except BeyondEnd:
            return self.changed(c, _kind(c, st, True), st)
        if len(got) < len(fp) or got[: len(fp)] != fp:
            return self.changed(c, _kind(c, st, len(got) < len(fp)), st)
        if moved and not self.head_matches(c.head, self.path):
            return self.changed(c, "rotated", st)
        return self.appended(c, got[len(fp) :], st)

    def grown(self, c: Cursor) -> Chunk | None:
        """The bytes appended since ``c``, read without a stat; None (for the stat to tell)
        if there are none, or the 64 bytes before the cursor are not the cursor's."""
        fp = _fingerprint(c)
        try:
            got = self.get(self.path, c.offset - len(fp))
        except BeyondEnd:
            return None
        if len(got) <= len(fp) or got[: len(fp)] != fp:
            return None
        return self.appended(c, got[len(fp) :], None)

    def appended(self, c: Cursor, new: bytes, st: Stat | None) -> Chunk:
        head = c.head
        if len(head) < min(HEAD_SIZE, c.offset):  # a cursor kept from before heads were
            head = self.get(self.path, 0, HEAD_SIZE)
        return self.emit(replace(c, head=head), self.take(new, c.offset), st)

    def first(self, st: Stat) -> Chunk:
        """The first read of a file the stream has no cursor for."""
        n = st.size if self.limit is None else min(st.size, self.limit)
        start, cap = self.options.start, self.options.max_first_read
        c0 = Cursor(phase=CURRENT)
        if n == 0:
            return self.emit(c0, b"", st)
        if start == "end":
            begin = max(0, n - START_WINDOW)
            window = self.get(self.path, begin, n - begin)
            cut = window.rfind(b"\n") + 1
            # From the last line boundary, so that the line being written is read whole;
            # none in the window: its end (a line that long starts before the window).
            at = begin + cut if cut or not begin else begin + len(window)
            head = window[:HEAD_SIZE] if begin == 0 else self.get(self.path, 0, HEAD_SIZE)
            fp = window[max(0, at - begin - FINGERPRINT_SIZE) : at - begin]
            mtime = st.mtime if at == st.size else ""
            log.info("%s: start: end, so the first read skips the %d bytes there", self.display, at)
            return self.chunk(b"", 1, Cursor(at, 0, b"", fp, head, CURRENT, mtime, st.inode))
        if cap and n > cap:
            begin = n - cap
            # Exactly up to n, not what came since: a replay (limit n) gets the same window.
            got = self.get(self.path, begin, cap)
            cut = got.find(b"\n") + 1 or len(got)  # none: one line longer than the cap
            at = begin + cut
            head = self.get(self.path, 0, HEAD_SIZE)
            log.info(
                "%s: first read of a %d-byte file: %d bytes skipped (max_first_read %d),"
                " reading from byte %d; line numbers count from there",
                self.display,
                st.size,
                at,
                cap,
                at,
            )
            fp = got[max(0, cut - FINGERPRINT_SIZE) : cut]
            return self.emit(Cursor(at, 0, b"", fp, head, CURRENT), got[cut:], st)
        return self.emit(c0, self.take(self.get(self.path, 0), 0), st)

    def emit(self, c: Cursor, new: bytes, st: Stat | None) -> Chunk:
        """The chunk of complete lines in ``c.tail + new`` (``new``: the bytes at ``c.offset``)."""
        head = c.head
        if c.offset <= len(head) < HEAD_SIZE:  # the file's beginning grows with it
            head = (head + new[len(head) - c.offset :])[:HEAD_SIZE]
        data, tail = self.lines(c.tail + new, c.line)
        offset = c.offset + len(new)
        fp = (_fingerprint(c) + new[-FINGERPRINT_SIZE:])[-FINGERPRINT_SIZE:]
        mtime, inode = self.stamps(st, offset)
        after = Cursor(offset, c.line + data.count(b"\n"), tail, fp, head, CURRENT, mtime, inode)
        return self.chunk(data, c.line + 1, after)

    def stamps(self, st: Stat | None, offset: int) -> tuple[str, int]:
        """The modification time and inode that go with a cursor at ``offset``."""
        if st is None:
            return "", 0
        if offset > st.size and st.mtime:
            # Appended between the stat and the read: that stat's time is older than the
            # bytes; a stat now tells, if nothing came since.
            again = self.files.stat(self.path, required=False)
            if again is not None and again.size == offset and again.inode == st.inode:
                return again.mtime, again.inode
        return (st.mtime if offset == st.size else ""), st.inode

    def lines(self, buf: bytes, line: int) -> tuple[bytes, bytes]:
        """Complete lines of ``buf``, and its partial last line, cut at ``max_line``."""
        cut = buf.rfind(b"\n") + 1
        data, tail = buf[:cut], buf[cut:]
        m = self.options.max_line
        if len(tail) <= m:
            return data, tail
        # A line still without its end at max_line (or a file without b"\n": CR only)
        # is emitted as it is, in pieces of max_line, so the tail stays bounded.
        k = (len(tail) - 1) // m * m
        log.warning(
            "%s: line %d has no end of line after %d bytes (max_line): emitted as %d line(s)"
            " of %d bytes, a \\n added",
            self.display,
            line + data.count(b"\n") + 1,
            len(tail),
            k // m,
            m,
        )
        return data + b"".join(tail[i : i + m] + b"\n" for i in range(0, k, m)), tail[k:]

    def head_matches(self, head: bytes, path: str) -> bool:
        return not head or self.get(path, 0, len(head)) == head

    def same_file(self, c: Cursor) -> bool:
        """Whether the file at the path still has the cursor's first and last bytes."""
        fp = _fingerprint(c)
        try:
            if c.offset <= HEAD_SIZE:
                got = self.get(self.path, 0, max(c.offset, len(c.head)))
                return got.startswith(c.head) and got[: c.offset].endswith(fp)
            before = self.get(self.path, c.offset - len(fp), len(fp))
            return before == fp and self.head_matches(c.head, self.path)
        except BeyondEnd:
            return False

    # -- the file at the path is another one

    def rotated_copy(self, c: Cursor) -> str | None:
        """Where the old file is: ``rotated``, or if that is a shell pattern the newest
        file matching it (of the first :data:`CANDIDATES`) that begins as the cursor's."""
        if self._copy is None:
            found = self.rotated
            if found is not None and re.search(r"[*?[]", found):
                stats = [(p, self.files.stat(p, required=False)) for p in self.files.list(found)]
                # Newest first by time where the source gives one, else by name (dates).
                fits = [(st.mtime, p) for p, st in stats if st and st.size >= c.offset]
                tried = [p for _, p in sorted(fits, reverse=True) if p != self.path]
                matches = (p for p in tried[:CANDIDATES] if self.head_matches(c.head, p))
                found = next(matches, None) if c.head else None
            self._copy = (found,)
        return self._copy[0]

    def changed(self, c: Cursor, kind: str, st: Stat | None) -> Chunk:
        if self.rotated is None or not (c.offset or c.tail):
            return self.restart(c, kind, st)
        path = self.rotated_copy(c)
        rst = self.files.stat(path, required=False) if path is not None else None
        if rst is None:
            return self.lost(c, kind, st, "was not found")
        if rst.size < c.offset or not self.head_matches(c.head, path):
            return self.lost(c, kind, st, "is not the file that was being read")
        how = "truncated" if kind == "truncated" else "replaced"
        rest = f"the rest of the old file from {path}, from byte {c.offset}"
        log.info("%s: file %s; reading %s", self.display, how, rest)
        return self.finish_rotated(replace(c, phase=ROTATED, mtime="", inode=0), st, rst)

    def finish_rotated(self, c: Cursor, st: Stat | None, rst: Stat | None = None) -> Chunk:
        """Read on in the rotated copy; finish it once the new file has bytes."""
        assert self.rotated is not None  # see run()
        path = self.rotated_copy(c)
        rst = rst or (self.files.stat(path, required=False) if path is not None else None)
        if path is None or rst is None or rst.size < c.offset:
            why = "was not found" if rst is None else "is not the file that was being read"
            return self.lost(c, "rotated", st, why)
        fp, new, capped = _fingerprint(c), b"", False
        if rst.size > c.offset:
            got = self.get(path, c.offset - len(fp))
            if len(got) < len(fp) or got[: len(fp)] != fp:
                return self.lost(c, "rotated", st, "is not the file that was being read")
            new = self.take(got[len(fp) :], c.offset)
            capped = len(new) < len(got) - len(fp)
        finished = st is not None and st.size > 0 and not capped
        data, tail = self.lines(c.tail + new, c.line)
        if finished and tail:  # the end of a file that will not grow: a complete line
            data, tail = data + tail + b"\n", b""
        fp = (fp + new[-FINGERPRINT_SIZE:])[-FINGERPRINT_SIZE:]
        line = c.line + data.count(b"\n")
        phase = FINISHED if finished else ROTATED
        after = Cursor(c.offset + len(new), line, tail, fp, c.head, phase)
        if finished:
            what = f"{path} to its end (byte {after.offset}, line {line}); reading {self.path}"
            log.info("%s: read %s from byte 0", self.display, what)
            if not data:  # nothing more of the old file: the new one in this read
                return self.restart(after, "rotated", st, quiet=True)
        return self.chunk(data, c.line + 1, after)

    def lost(self, c: Cursor, kind: str, st: Stat | None, why: str) -> Chunk:
        """No rotated copy to read the rest from: on with the new file, saying so."""
        chunk = self.restart(c, kind, st, quiet=True)
        if chunk.reset == "truncated" and c.phase == CURRENT:
            log.info(
                "%s: file truncated, reading again from byte 0 (the rotated file %s %s)",
                self.display,
                self.rotated,
                why,
            )
        else:
            dropped = f"; the {len(c.tail)} bytes of its unfinished line are lost" if c.tail else ""
            log.warning(
                "%s: file replaced; the rotated file %s %s: any bytes written to the old file"
                " after byte %d were not read%s",
                self.display,
                self.rotated,
                why,
                c.offset,
                dropped,
            )
        return chunk

    def restart(self, c: Cursor, kind: str, st: Stat | None, quiet: bool = False) -> Chunk:
        """The file at the path from byte 0."""
        if st is None:
            st = self.stat_path()
        c0 = Cursor(phase=CURRENT)
        if st.size == 0:
            chunk = self.emit(c0, b"", st)
        else:
            chunk = self.emit(c0, self.take(self.get(self.path, 0), 0), st)
        if not quiet:
            log.info("%s: file %s, reading again from byte 0", self.display, kind)
        return replace(chunk, reset=kind)
