"""FTPS for :class:`~headrace.etl.sources.ftp.FTPSource`: explicit AUTH TLS, protected data.

Two things plain :class:`ftplib.FTP_TLS` does not do: verify by default against the
CA the source was configured with, and resume the control connection's TLS session
on every data connection. Servers such as vsftpd (``require_ssl_reuse=YES``, its
default) refuse data connections that do not ("522 SSL connection failed: session
reuse required"), so that a third party cannot slip its own connection into the
transfer.
"""

from __future__ import annotations

import ftplib
import hashlib
import ssl
from dataclasses import dataclass
from pathlib import Path

from headrace.etl.sources.ftpwire import PipelinedFTP

__all__ = ["DataSessionRefused", "SessionReusingFTP_TLS", "TLSSettings"]


class DataSessionRefused(ftplib.error_temp):
    """The server refused a data connection that did not resume the control's TLS session.

    An ``error_temp``: a new login gets a fresh session, so the pool reconnects once.
    """


@dataclass(frozen=True)
class TLSSettings:
    """How a source checks the server: picklable, so it travels with the source.

    The CA certificates are read when the source is built, as credentials are:
    a Dask worker on another host need not have the file.
    """

    verify: bool = True
    cadata: str | None = None  # PEM; None: the system's trust store

    @classmethod
    def of(cls, verify: bool, ca_file: str | None, where: str) -> TLSSettings:
        """Settings from a source's options; ``ValueError`` naming ``where`` if unusable."""
        if not isinstance(verify, bool):
            raise ValueError(f"{where}: verify must be true or false, got {verify!r}")
        cadata = None
        if ca_file is not None:
            if not verify:
                raise ValueError(f"{where}: ca_file is given but verify is false")
            try:
                cadata = Path(ca_file).read_text()
            except (OSError, UnicodeDecodeError) as e:
                problem = "not found" if isinstance(e, FileNotFoundError) else type(e).__name__
                raise ValueError(f"{where}: ca_file {ca_file}: {problem}") from None
        settings = cls(verify, cadata)
        try:
            settings.context()  # a file without a PEM certificate fails now, not per tick
        except (ssl.SSLError, ValueError) as e:
            problem = f"no usable CA certificate ({e})"
            raise ValueError(f"{where}: ca_file {ca_file}: {problem}") from None
        return settings

    def context(self) -> ssl.SSLContext:
        if not self.verify:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return context
        # With cadata only that CA is trusted, not the system's store as well.
        return ssl.create_default_context(cadata=self.cadata)

    def key(self) -> tuple:
        digest = hashlib.sha256(self.cadata.encode()).hexdigest()[:16] if self.cadata else None
        return (self.verify, digest)


class SessionReusingFTP_TLS(ftplib.FTP_TLS, PipelinedFTP):
    """``FTP_TLS`` whose data connections resume the control connection's TLS session
    (and whose transfers from an offset send ``PASV``, ``REST`` and their command in one
    write, as :class:`PipelinedFTP`'s do)."""

    def ntransfercmd(self, cmd: str, rest: int | str | None = None) -> tuple:
        # PipelinedFTP's version, not FTP_TLS's: that one wraps without the session.
        conn, size = PipelinedFTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:
            conn = self.context.wrap_socket(
                conn, server_hostname=self.host, session=self.control_session()
            )
        return conn, size

    def control_session(self) -> ssl.SSLSession | None:
        # Read now, not kept from the handshake: with TLS 1.3 the server's session
        # ticket arrives after the handshake and is only taken in by the next read
        # on the control connection; the session right after AUTH TLS has none and
        # resumes nothing. By now the PASV and RETR replies have been read.
        return self.sock.session
