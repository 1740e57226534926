"""What every source shares: cursors, chunks, the source protocol, tail options.

A :class:`Source` reads the bytes appended since a :class:`Cursor` and returns
the complete lines among them as a :class:`Chunk`. Cursors are immutable values:
the caller stores the one it got back and passes it to the next call, so a
failed read never loses or repeats data (the caller simply retries with the old
cursor).

Every source shares one implementation of the cursor logic
(:func:`headrace.etl.sources.rotation.advance`: first reads, appended bytes, a file's identity and
its rotation); sources differ only in how they stat a file and read bytes from an
offset (:class:`Files`): :class:`~headrace.etl.sources.local.FileSource` (local disk) and
:class:`~headrace.etl.sources.ftp.FTPSource`; :func:`~headrace.etl.sources.factory.make_source`
builds one from its address.

A file is identified by its first bytes (:attr:`Cursor.head`, as Filebeat, Vector
and Fluent Bit do); every read also checks the 64 bytes before the cursor, which
costs nothing extra: they come in the same transfer as the new bytes. When the
file is no longer the one the cursor was reading (it shrank, those bytes differ,
or its inode or modification time changed and its first bytes differ), the rest
of the old file is read from its rotated copy (``app.log.1``) if there is one, then
the new file from byte 0. See :mod:`headrace.etl.sources.rotation`.
"""

from __future__ import annotations

import logging
import posixpath
import re
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from headrace.etl.store.pickles import by_fields

__all__ = [
    "BeyondEnd",
    "Chunk",
    "Cursor",
    "Files",
    "Source",
    "SourceError",
    "Stat",
    "TailOptions",
    "redact_url",
]

log = logging.getLogger(__name__)

MiB = 1 << 20

# Where a cursor is, in Cursor.phase.
NEW = ""  # no cursor yet: the first read decides where to start (start, max_first_read)
CURRENT = "current"  # reading the file at the source's path
ROTATED = "rotated"  # finishing the old file, now at its rotated path
FINISHED = "finished"  # the old file was read to its end: next, the new file from byte 0
PHASES = (NEW, CURRENT, ROTATED, FINISHED)


class SourceError(Exception):
    """A source could not be read. The message names the source, never a password.

    Bad configuration found when a source is built raises ``ValueError`` instead.
    """


class BeyondEnd(Exception):
    """The offset asked for is past the end of the file: it shrank."""


@by_fields
@dataclass(frozen=True)
class Cursor:
    offset: int = 0  # bytes of the file read so far (the tail included)
    line: int = 0  # lines consumed so far in this file (1-based numbers follow on from it)
    tail: bytes = b""  # partial last line read but not yet consumed (no b"\n")
    fingerprint: bytes = b""  # the up-to-64 bytes before `offset`, checked on every read
    # The file's identity: its first bytes, up to 1,024 (fewer while the file is smaller;
    # extended as it grows). Compared only when something looks off, and with the rotated
    # file to make sure it is the one this cursor was reading.
    head: bytes = b""
    phase: str = NEW  # one of PHASES
    mtime: str = ""  # modification time when last seen at this size (MDTM, ns); "": unknown
    inode: int = 0  # local files: the inode read; 0: unknown (FTP)


@dataclass(frozen=True)
class Chunk:
    """What one read returns.

    A chunk holds lines of one file only. ``first_line`` is the number of its first
    line in that file: after a rotation, the chunk that starts the new file has
    ``first_line == 1`` and ``reset`` set; the rest of the old file, read from its
    rotated copy first, came in chunks numbered on from the old cursor.
    """

    data: bytes  # complete lines only (previous tail + new bytes up to the last b"\n")
    first_line: int  # 1-based line number of the first line in `data`
    cursor: Cursor  # the cursor after this chunk
    transfers: int  # data transfers (RETR / file reads) made by this call
    reset: str | None  # None, "truncated" or "rotated": reading restarted at byte 0
    source: str  # display name of the source, credentials redacted
    error: str | None = None  # set instead of data when the source could not be read


@dataclass(frozen=True)
class Stat:
    size: int
    mtime: str = ""  # "" where the source cannot tell
    inode: int = 0  # 0 where the source cannot tell


class Files(Protocol):
    """What a source gives the shared cursor logic: a stat and a read, by path.

    ``reads_first(path)`` (optional): whether a file that grew at its last read is read
    again before any stat, as long as it grows. For sources whose stat costs a request and
    whose stamps tell a file that did not grow (FTP with ``MDTM``), once a file keeps growing.
    """

    def stat(
        self, path: str, *, required: bool = True, grown_past: int | None = None
    ) -> Stat | None:
        """The file's size and stamps; None if it does not exist and not ``required``.

        A source whose stamps cost a request may leave them unknown ("") when the size is
        above ``grown_past``: the file grew, and its new bytes are read (and checked).
        """
        ...

    def read(self, path: str, offset: int, size: int | None = None) -> bytes:
        """Bytes from ``offset`` (to the end, or ``size`` at most), in one transfer.

        Raises :class:`BeyondEnd` if ``offset`` is past the end of the file.
        """
        ...

    def list(self, pattern: str) -> list[str]:
        """The paths of the files in ``pattern``'s folder whose names match its name."""
        ...


class Source(Protocol):
    display: str  # the source as logs and pages name it, never with a password
    # What reading it shares with other sources (a server and login): the loop reads the
    # files of one server together, in one task on one connection.
    server: str

    def read(self, cursor: Cursor, limit: int | None = None) -> Chunk: ...

    def close(self) -> None: ...


# --- options every source takes --------------------------------------------------------

_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3}
_UNITS.update({"k": 1 << 10, "kib": 1 << 10, "m": MiB, "mib": MiB, "g": 1 << 30, "gib": 1 << 30})


def _bytes(setting: str, value: Any, least: int) -> int:
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", value)
        unit = _UNITS.get(match.group(2).lower()) if match else None
        if match and unit is not None:
            value = int(match.group(1)) * unit
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        what = "a positive" if least else "a"
        raise ValueError(f"{setting}: must be {what} number of bytes (e.g. 4MiB), got {value!r}")
    return value


@dataclass(frozen=True)
class TailOptions:
    """How a source follows its file; the stream options of the same names.

    - ``rotated``: where the old file is after a rotation, ``{name}`` the file's name,
      relative to its folder; None (``none`` in YAML) to not look for it. With ``*``,
      ``?`` or ``[...]`` it is a shell pattern (``{name}-*`` for logrotate's
      ``dateext``): the old file is the newest match that begins as the file read did.
    - ``start``: where the first read of a file the stream has no cursor for starts,
      ``beginning`` or ``end``.
    - ``max_first_read``: such a first read takes at most the file's last bytes this
      many, from the first line boundary in them (0: no cap).
    - ``max_line``: a line still without its end of line at this many bytes is emitted
      as it is (with a ``\\n``) rather than kept growing.
    """

    rotated: str | None = "{name}.1"
    start: str = "beginning"
    max_first_read: int = 16 * MiB
    max_line: int = 4 * MiB

    @classmethod
    def of(cls, **options: Any) -> TailOptions:
        """Checked options; ``ValueError`` naming the setting if one is not usable."""
        unknown = set(options) - {"rotated", "start", "max_first_read", "max_line"}
        if unknown:
            raise TypeError(f"unknown options {sorted(unknown)}")
        return cls(**{k: cls.check(k, v) for k, v in options.items()})

    @staticmethod
    def check(setting: str, value: Any) -> Any:
        """``value`` of ``setting``, normalised (sizes in bytes); ``ValueError`` if unusable."""
        if setting == "rotated":
            if value is None or value is False or value == "none":
                return None
            try:
                name = value.format(name="app.log") if isinstance(value, str) else None
            except (AttributeError, KeyError, IndexError, ValueError):
                name = None
            if not name or name == "app.log" or "\r" in value or "\n" in value:
                raise ValueError(
                    f"rotated: must be a file name made of {{name}}, e.g. '{{name}}.1', or none;"
                    f" got {value!r}"
                )
            return value
        if setting == "start":
            if value not in ("beginning", "end"):
                raise ValueError(f"start: must be beginning or end, got {value!r}")
            return value
        if setting == "max_first_read":
            return _bytes(setting, value, 0)
        if setting == "max_line":
            return _bytes(setting, value, 1)
        raise TypeError(f"unknown option {setting!r}")

    def rotated_path(self, path: str, paths: Any = posixpath) -> str | None:
        """Where ``path``'s rotated copy is (``paths``: ``os.path`` or ``posixpath``)."""
        if self.rotated is None:
            return None
        folder, name = paths.split(path)
        return paths.join(folder, self.rotated.format(name=name))


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
