"""Tail a growing log file: cursors, chunks, the source protocol, local files.

A :class:`Source` reads the bytes appended since a :class:`Cursor` and returns
the complete lines among them as a :class:`Chunk`. Cursors are immutable values:
the caller stores the one it got back and passes it to the next call, so a
failed read never loses or repeats data (the caller simply retries with the old
cursor).

Every source shares one implementation of the cursor logic (:func:`advance`);
they differ only in how they get the file's size and the bytes from an offset.
:class:`FileSource` (local disk) is here; the FTP source is in :mod:`etl.ftp`.

A file that shrank below the cursor ("truncated") or whose bytes just before the
cursor changed ("rotated": replaced by another file) is read again from byte 0
and the chunk says so in ``reset``. A file replaced by one of exactly the same
size cannot be told apart until it grows.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

__all__ = [
    "BeyondEnd",
    "Chunk",
    "Cursor",
    "FileSource",
    "Source",
    "SourceError",
    "advance",
    "make_source",
    "redact_url",
]

log = logging.getLogger("headrace.etl")

FINGERPRINT_SIZE = 64


class SourceError(Exception):
    """A source could not be read. The message names the source, never a password.

    Bad configuration found when a source is built raises ``ValueError`` instead.
    """


@dataclass(frozen=True)
class Cursor:
    offset: int = 0  # bytes of the file read so far (the tail included)
    line: int = 0  # complete lines consumed so far
    tail: bytes = b""  # partial last line read but not yet consumed (no b"\n")
    fingerprint: bytes = b""  # the last up-to-64 bytes of the file before `offset`


@dataclass(frozen=True)
class Chunk:
    data: bytes  # complete lines only (previous tail + new bytes up to the last b"\n")
    first_line: int  # 1-based line number of the first line in `data`
    cursor: Cursor  # the cursor after this chunk
    transfers: int  # data transfers (RETR / file reads) made by this call
    reset: str | None  # None, "truncated" or "rotated": reading restarted at byte 0
    source: str  # display name of the source, credentials redacted
    error: str | None = None  # set instead of data when the source could not be read


class Source(Protocol):
    display: str

    def read(self, cursor: Cursor, limit: int | None = None) -> Chunk: ...

    def close(self) -> None: ...


def make_source(spec: str, **options) -> Source:
    """Build a source from ``ftp://...``, ``ftps://...``, ``file://...`` or a plain path."""
    scheme = spec.split("://", 1)[0].lower() if "://" in spec else ""
    if scheme in ("ftp", "ftps"):
        from .ftp import FTPSource  # here, not at the top: etl.ftp imports this module

        return FTPSource(spec, **options)
    if scheme == "file":
        return FileSource(unquote(urlsplit(spec).path), **options)
    if not scheme:
        return FileSource(spec, **options)
    raise ValueError(
        f"unsupported source {redact_url(spec)!r}: use ftp://, ftps://, file:// or a path"
    )


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``: safe to log or show."""
    if "://" not in url:
        return url
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # e.g. a non-numeric port: redact the whole userinfo
        scheme, rest = url.split("://", 1)
        netloc, sep, path = rest.partition("/")
        return f"{scheme}://***@{netloc.rpartition('@')[2]}{sep}{path}"
    if password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{parts.username}:***@{host}").geturl()


# --- the cursor logic, shared by every source ------------------------------------------


class BeyondEnd(Exception):
    """The offset asked for is past the end of the file: it shrank."""


def advance(
    cursor: Cursor,
    limit: int | None,
    size: Callable[[], int],
    read_from: Callable[[int], bytes],
    display: str,
) -> Chunk:
    """Read what follows ``cursor`` with the source's two primitives.

    ``read_from(offset)`` returns the bytes from ``offset`` to the end of the file,
    in one transfer, or raises :class:`BeyondEnd`. With ``limit``, nothing at or
    past that byte offset is consumed: replaying a tick gives the same chunk again.
    """
    reset = None
    transfers = 0
    n = size()
    if n < cursor.offset:
        reset, cursor = "truncated", Cursor()
    if limit is not None:
        n = min(n, limit)
    if n <= cursor.offset:
        # Nothing new: no data transfer at all, which is what most ticks are.
        return _reset_logged(Chunk(b"", cursor.line + 1, cursor, 0, reset, display))

    fp = cursor.fingerprint[-cursor.offset :] if cursor.offset else b""
    try:
        # Re-read the fingerprint bytes with the new ones: one transfer both checks
        # that this is still the same file and returns the new data.
        got = read_from(cursor.offset - len(fp))
        transfers += 1
        if got[: len(fp)] != fp:
            reset = "rotated" if len(got) >= len(fp) else "truncated"
    except BeyondEnd:
        reset = "truncated"
    if reset and cursor.offset:
        cursor, fp = Cursor(), b""
        got = read_from(0)
        transfers += 1

    # Without a limit, keep what was appended between the size and the read too.
    new = got[len(fp) :] if limit is None else got[len(fp) : len(fp) + limit - cursor.offset]
    buf = cursor.tail + new
    cut = buf.rfind(b"\n") + 1
    data = buf[:cut]
    after = Cursor(
        offset=cursor.offset + len(new),
        line=cursor.line + data.count(b"\n"),
        tail=buf[cut:],
        fingerprint=(fp + new)[-FINGERPRINT_SIZE:],
    )
    return _reset_logged(Chunk(data, cursor.line + 1, after, transfers, reset, display))


def _reset_logged(chunk: Chunk) -> Chunk:
    if chunk.reset:
        log.info("%s: file %s, reading again from byte 0", chunk.source, chunk.reset)
    return chunk


# --- local files -----------------------------------------------------------------------


class FileSource:
    """A log file on a local (or mounted) file system."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        self.display = str(Path(self.path).absolute())

    def __repr__(self) -> str:
        return f"FileSource({self.display!r})"

    def read(self, cursor: Cursor, limit: int | None = None) -> Chunk:
        try:
            return advance(cursor, limit, self._size, self._read_from, self.display)
        except OSError as e:
            raise SourceError(f"{self.display}: {_os_problem(e)}") from e

    def close(self) -> None:
        pass  # a file is opened per read, so that a rotated file is seen at once

    def _size(self) -> int:
        return os.stat(self.path).st_size

    def _read_from(self, offset: int) -> bytes:
        with open(self.path, "rb") as f:
            if os.fstat(f.fileno()).st_size < offset:
                raise BeyondEnd
            f.seek(offset)
            return f.read()


def _os_problem(e: OSError) -> str:
    if isinstance(e, FileNotFoundError):
        return "no such file"
    return e.strerror or type(e).__name__
