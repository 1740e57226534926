"""Tail a log file on an FTP or FTPS server: :class:`FTPSource` and its connection pool.

The cursor logic is the one every source shares (:func:`headrace.etl.sources.rotation.advance`);
what lives here is FTP's own: credentials (URL, environment, netrc), one persistent login
per process and server, reconnecting when a reused connection turns out dead, and the
primitives the cursor logic reads with (``SIZE`` and ``MDTM``, a ``RETR`` from an offset,
whole or cut short). Kept apart from :mod:`headrace.etl.sources.base` so that the local
source does not carry ftplib. What FTPS adds to ftplib is in :mod:`headrace.etl.sources.ftps`.
"""

from __future__ import annotations

import contextlib
import fnmatch
import ftplib
import hashlib
import logging
import os
import posixpath
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from headrace.etl.sources.base import (
    BeyondEnd,
    Chunk,
    Cursor,
    SourceError,
    Stat,
    TailOptions,
    redact_url,
)
from headrace.etl.sources.credentials import netrc_lookup
from headrace.etl.sources.ftps import DataSessionRefused, SessionReusingFTP_TLS, TLSSettings
from headrace.etl.sources.ftpwire import PipelinedFTP
from headrace.etl.sources.rotation import advance

__all__ = ["FTPSource"]

log = logging.getLogger(__name__)

_BLOCK = 1 << 16  # bytes asked of the data connection at a time
GROWING = 3  # ticks in a row that found a file grown, before it is read without a SIZE

# Errors after which a reused connection is presumed dead (dropped by the server,
# network blip, protocol out of step): reconnect once and retry the whole read.
_RETRYABLE = (OSError, EOFError, ftplib.error_temp, ftplib.error_reply, ftplib.error_proto)


@dataclass
class _Conn:
    lock: threading.Lock = field(default_factory=threading.Lock)  # one call at a time
    ftp: ftplib.FTP | None = None
    last_used: float = 0.0
    mdtm: bool = True  # False once the server said it has no MDTM
    growing: dict[str, int] = field(default_factory=dict)  # ticks in a row a file grew
    doing: str = ""  # the command under way, for errors to name


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

    ``url`` is ``ftp://[user[:password]@]host[:port]/path``, percent-encoded, or
    ``ftps://...`` for explicit FTPS (AUTH TLS on the FTP port, 21 by default; the
    data connections protected too, with PROT P). The server's certificate is
    verified, host name included, against the system's trust store or the CAs in
    ``ca_file``; ``verify=False`` turns that off (a test server; logged). As in
    RFC 1738 the path is relative to the login directory; start it with ``%2F``
    for an absolute path. Without a password in the URL, it comes from the
    environment variable ``password_env``, else from the netrc file (``netrc_file``
    or ``~/.netrc``), else the login is anonymous. Credentials are resolved here,
    in the process that builds the source, and travel with it when pickled.

    A bad configuration (URL, unset environment variable, unusable netrc file)
    raises ``ValueError`` here; failures to read raise :class:`SourceError`.
    ``options`` are :class:`headrace.etl.sources.base.TailOptions`' (``rotated``, ``start``,
    ``max_first_read``, ``max_line``); the rotated file is looked for in the same
    folder on the server.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 10.0,
        password_env: str | None = None,
        netrc_file: str | None = None,
        keepalive: float = 60.0,
        ca_file: str | None = None,
        verify: bool = True,
        **options: Any,
    ) -> None:
        try:
            parts = urlsplit(url)
            port = parts.port or ftplib.FTP_PORT
        except ValueError as e:
            raise ValueError(f"{redact_url(url)}: invalid FTP URL") from e
        scheme = parts.scheme.lower()
        if scheme not in ("ftp", "ftps") or not parts.hostname or not parts.path.strip("/"):
            raise ValueError(f"{redact_url(url)}: expected ftp[s]://[user@]host[:port]/path")
        self.scheme = scheme
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
        place = f"{host}:{port}{parts.path}"
        self.user, self._password = self._credentials(
            user, password, password_env, netrc_file, f"{scheme}://{place}"
        )
        who = "" if self.user == "anonymous" else f"{self.user}@"
        self.display = f"{scheme}://{who}{place}"
        self.server = f"{scheme}://{who}{host}:{port}"  # its files share a login (a tick's task)
        self.tls: TLSSettings | None = None
        if scheme == "ftps":
            self.tls = TLSSettings.of(verify, ca_file, self.display)
            if not verify:
                log.warning(
                    "%s: TLS certificate verification is off: the server is not authenticated",
                    self.display,
                )
        elif ca_file is not None or verify is not True:
            raise ValueError(f"{self.display}: ca_file and verify apply to ftps:// sources only")
        try:
            self.options = TailOptions.of(**options)
        except ValueError as e:
            raise ValueError(f"{self.display}: {e}") from None
        self.rotated = self.options.rotated_path(self.path, posixpath)

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
            found = netrc_lookup(self.host, netrc_file, where)
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
        # The TLS settings too: an ftp:// source must never get an ftps:// one's
        # connection, nor an unverified one a verified one's, or the other way round.
        # Not the path: the files of one server share its login (one call at a time), so
        # a tick that reads a hundred files of a server costs no hundred logins.
        digest = hashlib.sha256(self._password.encode()).hexdigest()[:16]
        tls = self.tls.key() if self.tls is not None else None
        return (self.scheme, tls, self.host, self.port, self.user, digest)

    def read(self, cursor: Cursor, limit: int | None = None) -> Chunk:
        where = (self.path, self.rotated, self.options, self.display)
        return self._with_connection(lambda c: advance(cursor, limit, _Files(self, c), *where))

    def close(self) -> None:
        with _pool_lock:
            conn = _pool.pop(self._key(), None)
        if conn is not None:
            with conn.lock:
                _drop(conn)

    # -- the connection

    def _with_connection(self, work: Callable[[_Conn], T]) -> T:
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
            conn.doing = ""
            try:
                result = work(conn)
            except _RETRYABLE as e:
                if fresh:
                    _drop(conn)
                    raise self._error(self._failed(conn, e), e) from e
                self._reconnect(conn, e)
                try:
                    result = work(conn)
                except _RETRYABLE as e2:
                    _drop(conn)
                    raise self._error(self._failed(conn, e2, " after reconnecting"), e2) from e2
            conn.last_used = time.monotonic()
            return result

    def _failed(self, conn: _Conn, e: BaseException, after: str = "") -> str:
        what = f"{conn.doing} failed" if conn.doing else "connection failed"
        return f"{what}{after}{self._waited(e)}"

    def _waited(self, e: BaseException) -> str:
        timed_out = isinstance(e, TimeoutError) or "timed out" in str(e)
        return f" (no answer within timeout: {self.timeout:g} s)" if timed_out else ""

    def _reconnect(self, conn: _Conn, why: BaseException) -> None:
        log.info("%s: reconnecting (%s)", self.display, self._scrub(_describe(why)))
        _drop(conn)
        self._connect(conn)

    def _connect(self, conn: _Conn) -> None:
        if self.tls is None:
            ftp = PipelinedFTP(timeout=self.timeout)
        else:
            ftp = SessionReusingFTP_TLS(context=self.tls.context(), timeout=self.timeout)
        step = "cannot connect"
        try:
            ftp.connect(self.host, self.port)
            if isinstance(ftp, ftplib.FTP_TLS):
                step = "AUTH TLS failed"
                ftp.auth()  # before the password goes out; checks the URL's host name
            step = f"login as {self.user!r} failed"
            ftp.login(self.user, self._password)
            if isinstance(ftp, ftplib.FTP_TLS):
                step = "PROT P (protected data connections) refused"
                ftp.prot_p()
            # Binary mode, or SIZE is refused (pyftpdlib) or counts converted bytes.
            ftp.sendcmd("TYPE I")
        except ssl.SSLCertVerificationError as e:
            ftp.close()
            hint = "set ca_file to the CA that signed it, or verify: false for a test server"
            raise self._error(f"server certificate not verified ({hint})", e) from e
        except (OSError, EOFError, ftplib.Error) as e:
            ftp.close()
            raise self._error(step + self._waited(e), e) from e
        conn.ftp = ftp
        conn.last_used = time.monotonic()
        conn.doing = ""

    def _error(self, problem: str, cause: BaseException | None = None) -> SourceError:
        detail = f": {_describe(cause)}" if cause is not None else ""
        return SourceError(self._scrub(f"{self.display}: {problem}{detail}"))

    def _scrub(self, text: str) -> str:
        # Messages are built from our own text and server replies; a server that
        # echoes the password must still not get it into a log.
        return text.replace(self._password, "***") if self._password else text


class _Files:
    """The primitives of :class:`headrace.etl.sources.base.Files` over one logged-in connection."""

    def __init__(self, source: FTPSource, conn: _Conn) -> None:
        assert conn.ftp is not None
        self.source, self.conn, self.ftp = source, conn, conn.ftp

    def reads_first(self, path: str) -> bool:
        # Once a file grew at a few ticks in a row: one that grows now and then would pay
        # a transfer at each of its first idle ticks for a SIZE saved.
        return self.conn.mdtm and self.conn.growing.get(path, 0) >= GROWING

    def stat(self, path: str, *, required: bool = True, grown_past: int | None = None):
        self.conn.doing = f"SIZE {path!r}"
        try:
            size = self.ftp.size(path)
        except ftplib.error_perm as e:
            if not required and str(e).startswith("550"):  # no such file
                return None
            raise self.source._error(f"cannot get the size of {path!r}", e) from e
        if size is None:
            raise self.source._error(f"SIZE {path!r} is not supported by the server")
        # MDTM of the file read, when it did not grow: it tells a same-size replacement on
        # an idle tick. A growing file's ticks save it; the first idle tick fetches it.
        grew = grown_past is not None and size > grown_past
        self.conn.growing[path] = self.conn.growing.get(path, 0) + 1 if grew else 0
        return Stat(size, "" if grew or path != self.source.path else self._mdtm(path))

    def _mdtm(self, path: str) -> str:
        if not self.conn.mdtm:
            return ""
        self.conn.doing = f"MDTM {path!r}"
        try:
            reply = self.ftp.sendcmd(f"MDTM {path}")
        except ftplib.error_perm as e:
            if str(e)[:3] in ("500", "501", "502", "504"):  # not implemented here
                self.conn.mdtm = False
                what = "a same-size replacement shows only when the file grows"
                log.info("%s: the server has no MDTM: %s", self.source.display, what)
            return ""  # 550: gone since the SIZE; the next tick sees it
        return reply[4:].strip() if reply.startswith("213") else ""

    def list(self, pattern: str) -> list[str]:
        folder, name = posixpath.split(pattern)
        self.conn.doing = f"NLST {folder or '.'!r}"
        try:
            found = self.ftp.nlst(*([folder] if folder else []))
        except ftplib.error_perm as e:
            found, refused = [], e
        else:
            refused = None
        self.ftp.sendcmd("TYPE I")  # NLST went to ASCII, where SIZE and REST are refused
        if refused is not None and str(refused)[:3] not in ("450", "550"):
            raise self.source._error(f"cannot list {folder or '.'!r}", refused) from refused
        # 450/550: some servers' answer for a folder with nothing in it.
        names = {posixpath.basename(n.rstrip("/")) for n in found}  # some give paths
        return [posixpath.join(folder, n) for n in sorted(names) if fnmatch.fnmatchcase(n, name)]

    def read(self, path: str, offset: int, size: int | None = None) -> bytes:
        if size == 0:
            return b""
        ftp = self.ftp
        self.conn.doing = f"RETR {path!r} from byte {offset:,}"
        try:
            # REST 0 would only cost a round trip.
            data_conn = ftp.transfercmd(f"RETR {path}", rest=offset or None)
        except ftplib.error_perm as e:
            # RFC 1123: 554 when REST is past the end. Other 55x are taken the same way
            # (the file shrank or went away mid-rotation); 50x means no REST support.
            if offset and str(e).startswith("55"):
                raise BeyondEnd from e
            raise self.source._error(f"cannot retrieve {path!r}", e) from e
        parts: list[bytes] = []
        got, cut = 0, False
        with data_conn:
            while size is None or got < size:
                block = data_conn.recv(_BLOCK if size is None else min(_BLOCK, size - got))
                if not block:
                    break
                parts.append(block)
                got += len(block)
            else:
                cut = True  # enough (a file's first bytes): the rest is not wanted
            if isinstance(data_conn, ssl.SSLSocket) and not cut:
                # Our close_notify, as ftplib's retrbinary sends it. If the server has
                # closed first, its reply below (226 or not) is what counts.
                with contextlib.suppress(OSError):
                    data_conn.unwrap()
        try:
            ftp.voidresp()
        except ftplib.error_perm as e:
            if str(e).startswith("522"):
                # The data connection's TLS was refused, e.g. the control session had
                # expired on the server (vsftpd: session reuse required); a new login
                # starts a new session.
                raise DataSessionRefused(str(e)) from e
            if not cut:
                raise self.source._error(f"cannot retrieve {path!r}", e) from e
        except ftplib.error_temp:
            if not cut:
                raise
            # 426 or 451: the server saw us close the data connection mid-transfer.
        return b"".join(parts)


def _describe(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _drop(conn: _Conn) -> None:
    if conn.ftp is not None:
        conn.ftp.close()  # no QUIT: the connection may be dead, and QUIT could block
        conn.ftp = None
