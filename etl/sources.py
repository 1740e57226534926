"""Tail a growing log file, over FTP or on a local disk.

A :class:`Source` reads the bytes appended since a :class:`Cursor` and returns
the complete lines among them as a :class:`Chunk`. Cursors are immutable values:
the caller stores the one it got back and passes it to the next call, so a
failed read never loses or repeats data (the caller simply retries with the old
cursor).

Both sources share one implementation of the cursor logic (:func:`_advance`);
they differ only in how they get the file's size and the bytes from an offset.

A file that shrank below the cursor ("truncated") or whose bytes just before the
cursor changed ("rotated": replaced by another file) is read again from byte 0
and the chunk says so in ``reset``. A file replaced by one of exactly the same
size cannot be told apart until it grows.
"""

from __future__ import annotations

import ftplib
import hashlib
import logging
import netrc
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar
from urllib.parse import unquote, urlsplit

__all__ = [
    "Chunk",
    "Cursor",
    "FTPSource",
    "FileSource",
    "Source",
    "SourceError",
    "extract",
    "make_source",
    "redact_url",
]

log = logging.getLogger("headrace.etl")

FINGERPRINT_SIZE = 64
_BLOCK = 1 << 16


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


def extract(source: Source, cursor: Cursor, limit: int | None = None) -> Chunk:
    """What a Dask task runs: the chunk after ``cursor``."""
    return source.read(cursor, limit=limit)


def make_source(spec: str, **options) -> Source:
    """Build a source from ``ftp://...``, ``file://...`` or a plain path."""
    scheme = spec.split("://", 1)[0].lower() if "://" in spec else ""
    if scheme == "ftp":
        return FTPSource(spec, **options)
    if scheme == "file":
        return FileSource(unquote(urlsplit(spec).path), **options)
    if not scheme:
        return FileSource(spec, **options)
    raise ValueError(f"unsupported source {redact_url(spec)!r}: use ftp://, file:// or a path")


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


class _BeyondEnd(Exception):
    """The offset asked for is past the end of the file: it shrank."""


def _advance(
    cursor: Cursor,
    limit: int | None,
    size: Callable[[], int],
    read_from: Callable[[int], bytes],
    display: str,
) -> Chunk:
    """Read what follows ``cursor`` with the source's two primitives.

    ``read_from(offset)`` returns the bytes from ``offset`` to the end of the file,
    in one transfer, or raises :class:`_BeyondEnd`. With ``limit``, nothing at or
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
    except _BeyondEnd:
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
            return _advance(cursor, limit, self._size, self._read_from, self.display)
        except OSError as e:
            raise SourceError(f"{self.display}: {_os_problem(e)}") from e

    def close(self) -> None:
        pass  # a file is opened per read, so that a rotated file is seen at once

    def _size(self) -> int:
        return os.stat(self.path).st_size

    def _read_from(self, offset: int) -> bytes:
        with open(self.path, "rb") as f:
            if os.fstat(f.fileno()).st_size < offset:
                raise _BeyondEnd
            f.seek(offset)
            return f.read()


def _os_problem(e: OSError) -> str:
    if isinstance(e, FileNotFoundError):
        return "no such file"
    return e.strerror or type(e).__name__


# --- FTP -------------------------------------------------------------------------------

# Errors after which a reused connection is presumed dead (dropped by the server,
# network blip, protocol out of step): reconnect once and retry the whole read.
_RETRYABLE = (OSError, EOFError, ftplib.error_temp, ftplib.error_reply, ftplib.error_proto)


@dataclass
class _Conn:
    lock: threading.Lock = field(default_factory=threading.Lock)  # one call at a time
    ftp: ftplib.FTP | None = None
    last_used: float = 0.0


_pool: dict[tuple, _Conn] = {}
_pool_lock = threading.Lock()


def _forget_pool_in_child() -> None:
    # A forked child must not talk on its parent's control connections.
    global _pool, _pool_lock
    _pool, _pool_lock = {}, threading.Lock()


os.register_at_fork(after_in_child=_forget_pool_in_child)

T = TypeVar("T")


class FTPSource:
    """A log file on an FTP server, read over one persistent connection per process.

    ``url`` is ``ftp://[user[:password]@]host[:port]/path``, percent-encoded. As in
    RFC 1738 the path is relative to the login directory; start it with ``%2F``
    for an absolute path. Without a password in the URL, it comes from the
    environment variable ``password_env``, else from the netrc file (``netrc_file``
    or ``~/.netrc``), else the login is anonymous. Credentials are resolved here,
    in the process that builds the source, and travel with it when pickled.

    A bad configuration (URL, unset environment variable, unusable netrc file)
    raises ``ValueError`` here; failures to read raise :class:`SourceError`.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 10.0,
        password_env: str | None = None,
        netrc_file: str | None = None,
        keepalive: float = 60.0,
    ) -> None:
        try:
            parts = urlsplit(url)
            port = parts.port or ftplib.FTP_PORT
        except ValueError as e:
            raise ValueError(f"{redact_url(url)}: invalid FTP URL") from e
        if parts.scheme.lower() != "ftp" or not parts.hostname or not parts.path.strip("/"):
            raise ValueError(f"{redact_url(url)}: expected ftp://[user@]host[:port]/path")
        self.host = parts.hostname
        self.port = port
        self.path = unquote(parts.path[1:])
        if "\r" in self.path or "\n" in self.path:  # would inject FTP commands
            raise ValueError(f"{redact_url(url)}: line breaks in the path")
        self.timeout = timeout
        self.keepalive = keepalive
        user = unquote(parts.username) if parts.username is not None else None
        password = unquote(parts.password) if parts.password is not None else None
        host = f"[{self.host}]" if ":" in self.host else self.host
        where = f"{host}:{port}{parts.path}"
        self.user, self._password = self._credentials(
            user, password, password_env, netrc_file, f"ftp://{where}"
        )
        who = "" if self.user == "anonymous" else f"{self.user}@"
        self.display = f"ftp://{who}{where}"

    def _credentials(
        self,
        user: str | None,
        password: str | None,
        password_env: str | None,
        netrc_file: str | None,
        where: str,
    ) -> tuple[str, str]:
        if password is None and password_env:
            password = os.environ.get(password_env)
            if password is None:
                raise ValueError(f"{where}: environment variable {password_env} is not set")
        if password is None:
            found = _netrc_lookup(self.host, netrc_file, where)
            if found and (user is None or found[0] in ("", user)):
                user = user or found[0] or None
                password = found[1]
        if user is None:
            return "anonymous", password or ""  # ftplib sends "anonymous@"
        return user, password or ""

    def __repr__(self) -> str:
        return f"FTPSource({self.display!r})"

    __str__ = __repr__

    def _key(self) -> tuple:
        # The password's digest is part of the key so that a source with other
        # credentials never borrows a connection someone else logged in.
        digest = hashlib.sha256(self._password.encode()).hexdigest()[:16]
        return (self.host, self.port, self.user, self.path, digest)

    def read(self, cursor: Cursor, limit: int | None = None) -> Chunk:
        return self._with_connection(
            lambda ftp: _advance(
                cursor,
                limit,
                lambda: self._size(ftp),
                lambda offset: self._read_from(ftp, offset),
                self.display,
            )
        )

    def close(self) -> None:
        with _pool_lock:
            conn = _pool.pop(self._key(), None)
        if conn is not None:
            with conn.lock:
                _drop(conn)

    # -- primitives

    def _size(self, ftp: ftplib.FTP) -> int:
        try:
            size = ftp.size(self.path)
        except ftplib.error_perm as e:
            raise self._error(f"cannot get the size of {self.path!r}", e) from e
        if size is None:
            raise self._error(f"SIZE {self.path!r} is not supported by the server")
        return size

    def _read_from(self, ftp: ftplib.FTP, offset: int) -> bytes:
        try:
            # REST 0 would only cost a round trip.
            data_conn = ftp.transfercmd(f"RETR {self.path}", rest=offset or None)
        except ftplib.error_perm as e:
            # RFC 1123: 554 when REST is past the end. Other 55x are taken the same way
            # (the file shrank or went away mid-rotation); 50x means no REST support.
            if offset and str(e).startswith("55"):
                raise _BeyondEnd from e
            raise self._error(f"cannot retrieve {self.path!r}", e) from e
        parts = []
        with data_conn:
            while block := data_conn.recv(_BLOCK):
                parts.append(block)
        ftp.voidresp()
        return b"".join(parts)

    # -- the connection

    def _with_connection(self, work: Callable[[ftplib.FTP], T]) -> T:
        with _pool_lock:
            conn = _pool.setdefault(self._key(), _Conn())
        with conn.lock:
            fresh = conn.ftp is None
            if fresh:
                self._connect(conn)
            elif time.monotonic() - conn.last_used > self.keepalive:
                try:
                    conn.ftp.voidcmd("NOOP")
                except _RETRYABLE as e:
                    self._reconnect(conn, e)
                    fresh = True
            try:
                result = work(conn.ftp)
            except _RETRYABLE as e:
                if fresh:
                    _drop(conn)
                    raise self._error("connection failed", e) from e
                self._reconnect(conn, e)
                try:
                    result = work(conn.ftp)
                except _RETRYABLE as e2:
                    _drop(conn)
                    raise self._error("connection failed after reconnecting", e2) from e2
            conn.last_used = time.monotonic()
            return result

    def _reconnect(self, conn: _Conn, why: BaseException) -> None:
        log.info("%s: reconnecting (%s)", self.display, self._scrub(_describe(why)))
        _drop(conn)
        self._connect(conn)

    def _connect(self, conn: _Conn) -> None:
        ftp = ftplib.FTP(timeout=self.timeout)
        try:
            ftp.connect(self.host, self.port)
        except (OSError, EOFError, ftplib.Error) as e:
            ftp.close()
            raise self._error("cannot connect", e) from e
        try:
            ftp.login(self.user, self._password)
            # Binary mode, or SIZE is refused (pyftpdlib) or counts converted bytes.
            ftp.sendcmd("TYPE I")
        except (OSError, EOFError, ftplib.Error) as e:
            ftp.close()
            raise self._error(f"login as {self.user!r} failed", e) from e
        conn.ftp = ftp
        conn.last_used = time.monotonic()

    def _error(self, problem: str, cause: BaseException | None = None) -> SourceError:
        detail = f": {_describe(cause)}" if cause is not None else ""
        return SourceError(self._scrub(f"{self.display}: {problem}{detail}"))

    def _scrub(self, text: str) -> str:
        # Messages are built from our own text and server replies; a server that
        # echoes the password must still not get it into a log.
        return text.replace(self._password, "***") if self._password else text


def _describe(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _drop(conn: _Conn) -> None:
    if conn.ftp is not None:
        conn.ftp.close()  # no QUIT: the connection may be dead, and QUIT could block
        conn.ftp = None


def _netrc_lookup(host: str, netrc_file: str | None, where: str) -> tuple[str, str] | None:
    if netrc_file is None and not (Path.home() / ".netrc").exists():
        return None
    try:
        entry = netrc.netrc(netrc_file).authenticators(host)
    except FileNotFoundError as e:
        raise ValueError(f"{where}: netrc file {netrc_file} not found") from e
    except netrc.NetrcParseError as e:
        # The parser's message may quote a token from the file: a password, maybe.
        problem = f"bad syntax or permissions too open (line {e.lineno})"
        raise ValueError(f"{where}: cannot use netrc file {e.filename}: {problem}") from None
    if entry is None:
        return None
    login, _account, password = entry
    return login or "", password or ""
