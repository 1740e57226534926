"""An FTP server in a thread, serving a folder read-only: for the demo, tests and benchmarks.

It counts logins and completed data transfers, which is how the tests and benchmarks
show that one transfer per tick reaches the server however many people watch. With
``tls`` it serves explicit FTPS only (AUTH TLS, PROT P required).
"""

from __future__ import annotations

import logging
import threading
import warnings
from pathlib import Path

with warnings.catch_warnings():
    # On Python < 3.12 pyftpdlib imports the stdlib's deprecated asyncore/asynchat.
    warnings.simplefilter("ignore", DeprecationWarning)
    from pyftpdlib.authorizers import DummyAuthorizer
    from pyftpdlib.handlers import DTPHandler, FTPHandler
    from pyftpdlib.ioloop import IOLoop
    from pyftpdlib.servers import FTPServer as _PyFTPServer

__all__ = ["FTPServer"]


def _quiet_pyftpdlib(level: int) -> None:
    logger = logging.getLogger("pyftpdlib")
    logger.setLevel(level)
    # With no handler anywhere, pyftpdlib's first loop configures logging itself
    # (its own stderr handler at INFO, plus process-wide logging tweaks); a
    # handler of ours prevents that.
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())


class FTPServer:
    """A pyftpdlib server in a daemon thread, serving ``root`` read-only.

    Anonymous if ``user`` is None. ``port=0`` picks a free port; the port is kept
    after ``stop()`` so that ``start()`` again serves on the same port (outage
    tests). ``transfers`` counts completed RETR data transfers, ``logins``
    successful logins, both over the server's whole life. ``idle_timeout`` is how
    long the server keeps an idle control connection (pyftpdlib's default, 300 s).
    ``tls`` (certificate file, key file) makes it an FTPS server that refuses both
    clear-text logins and clear-text data connections (pyftpdlib's ``TLS_FTPHandler``,
    which needs pyOpenSSL).
    """

    def __init__(
        self,
        root: str | Path,
        host: str = "127.0.0.1",
        port: int = 0,
        user: str | None = None,
        password: str | None = None,
        *,
        idle_timeout: float = 300.0,
        log_level: int = logging.WARNING,
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        self.root = Path(root)
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.idle_timeout = idle_timeout
        self.tls = tls
        self._counts = {"transfers": 0, "logins": 0}
        self._counts_lock = threading.Lock()
        self._server: _PyFTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        _quiet_pyftpdlib(log_level)

    @property
    def transfers(self) -> int:
        with self._counts_lock:
            return self._counts["transfers"]

    @property
    def logins(self) -> int:
        with self._counts_lock:
            return self._counts["logins"]

    def url(self, path: str) -> str:
        who = f"{self.user}:{self.password}@" if self.user is not None else ""
        scheme = "ftps" if self.tls is not None else "ftp"
        return f"{scheme}://{who}{self.host}:{self.port}/{path.lstrip('/')}"

    def start(self) -> FTPServer:
        if self._thread is not None:
            return self
        self._server = _PyFTPServer((self.host, self.port), self._handler(), ioloop=IOLoop())
        self.port = self._server.address[1]
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._serve, args=(self._server,), name="headrace-ftp", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, drop every connection and release the port."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = self._server = None

    def __enter__(self) -> FTPServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve(self, server: _PyFTPServer) -> None:
        # pyftpdlib's IOLoop is not thread safe: it is only touched from this thread,
        # polled in short steps so that stop() is noticed.
        try:
            while not self._stop.is_set():
                server.serve_forever(timeout=0.05, blocking=False, handle_exit=False)
        finally:
            server.close_all()  # closes the listening socket as well

    def _count(self, what: str) -> None:
        with self._counts_lock:
            self._counts[what] += 1

    def _handler(self) -> type[FTPHandler]:
        authorizer = DummyAuthorizer()
        if self.user is None:
            authorizer.add_anonymous(str(self.root))
        else:
            authorizer.add_user(self.user, self.password or "", str(self.root), perm="elr")
        owner = self
        control: type[FTPHandler] = FTPHandler
        data: type[DTPHandler] = DTPHandler
        if self.tls is not None:
            # pyftpdlib.handlers only has them with pyOpenSSL installed.
            from pyftpdlib.handlers import TLS_DTPHandler, TLS_FTPHandler

            control, data = TLS_FTPHandler, TLS_DTPHandler

        class DTP(data):
            def close(self) -> None:
                # Counted before the 226 reply goes out, so that a client that has its
                # reply also sees the count.
                if not self._closed and self.transfer_finished and self.cmd == "RETR":
                    owner._count("transfers")
                super().close()

        class Handler(control):
            def handle_auth_success(self, home, password, msg_login):
                owner._count("logins")
                super().handle_auth_success(home, password, msg_login)

        Handler.authorizer = authorizer
        Handler.dtp_handler = DTP
        Handler.timeout = self.idle_timeout
        Handler.auth_failed_timeout = 0.1  # pyftpdlib waits 3 s before a 530: slow for tests
        Handler.banner = "headrace demo FTP server ready."
        if self.tls is not None:
            # Set on this server's own subclass: pyftpdlib caches the SSL context on
            # the class it finds the certificate on.
            Handler.certfile, Handler.keyfile = (str(p) for p in self.tls)
            Handler.ssl_context = None
            Handler.tls_control_required = True
            Handler.tls_data_required = True
        return Handler
