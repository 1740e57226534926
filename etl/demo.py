"""The demo's data: log lines, a thread that writes them, an FTP server that serves them.

Used by the demo and by the tests. A demo line is an ISO-8601 UTC timestamp with
microseconds and a value, e.g. ``2026-11-23T09:17:02.123456Z 0.103412``.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

with warnings.catch_warnings():
    # On Python < 3.12 pyftpdlib imports the stdlib's deprecated asyncore/asynchat.
    warnings.simplefilter("ignore", DeprecationWarning)
    from pyftpdlib.authorizers import DummyAuthorizer
    from pyftpdlib.handlers import DTPHandler, FTPHandler
    from pyftpdlib.ioloop import IOLoop
    from pyftpdlib.servers import FTPServer as _PyFTPServer

__all__ = ["LINE_FORMAT", "FTPServer", "LogWriter", "format_line", "sample_value"]

LINE_FORMAT = "{time:%Y-%m-%dT%H:%M:%S.%f}Z {value:.6f}\n"


def format_line(t: float, value: float) -> bytes:
    """One demo line for the Unix time ``t``."""
    return LINE_FORMAT.format(time=datetime.fromtimestamp(t, UTC), value=value).encode()


def sample_value(rng: np.random.Generator) -> float:
    """Noise around 0.1 with rare spikes, in [0, 1]: the spikes are what viewers look for."""
    value = rng.normal(0.1, 0.01)
    if rng.random() < 0.002:
        value += 0.5
    return float(min(max(value, 0.0), 1.0))


class LogWriter:
    """A thread appending demo lines to files at ``rate`` lines per second each.

    Lines are written in batches driven by the wall clock, so the average rate
    holds even when the thread cannot wake up once per line (1000+ lines/s).
    The files stay open: a file replaced under the writer is not followed.
    """

    def __init__(
        self,
        paths: Iterable[str | Path],
        rate: float = 40.0,
        seed: int | None = None,
        flush_each_line: bool = True,
        keep: bool = False,
    ) -> None:
        self.paths = [Path(p) for p in paths]
        self.rate = rate
        self.flush_each_line = flush_each_line
        self.written: dict[Path, int] = {p: 0 for p in self.paths}
        # The exact bytes of every line written, per path, when keep=True.
        self.written_lines: dict[Path, list[bytes]] | None = (
            {p: [] for p in self.paths} if keep else None
        )
        self.error: BaseException | None = None
        self._rng = np.random.default_rng(seed)
        self._last_us = {p: 0 for p in self.paths}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def lines(self, path: str | Path) -> list[str]:
        """The lines written to ``path`` so far, without their newline (needs ``keep=True``)."""
        if self.written_lines is None:
            raise RuntimeError("LogWriter(keep=True) is needed to get the lines back")
        return [line.decode().rstrip("\n") for line in list(self.written_lines[Path(path)])]

    def start(self) -> LogWriter:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="headrace-logwriter", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> LogWriter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        # Unbuffered: every write() reaches the file at once, so readers see it.
        files = {p: open(p, "ab", buffering=0) for p in self.paths}  # noqa: SIM115
        try:
            start, done = time.time(), 0
            while not self._stop.is_set():
                due = int((time.time() - start) * self.rate) - done
                if due > 0:
                    self._write_batch(files, due)
                    done += due
                next_due = start + (done + 1) / self.rate
                self._stop.wait(min(max(next_due - time.time(), 0.0), 0.1))
        except BaseException as e:  # kept for the owner to look at: a thread cannot raise
            self.error = e
        finally:
            for f in files.values():
                f.close()

    def _write_batch(self, files: dict, count: int) -> None:
        for path, f in files.items():
            lines = [format_line(self._now(path), sample_value(self._rng)) for _ in range(count)]
            if self.flush_each_line:
                for line in lines:
                    f.write(line)
            else:
                f.write(b"".join(lines))
            if self.written_lines is not None:
                self.written_lines[path].extend(lines)
            self.written[path] += count

    def _now(self, path: Path) -> float:
        # Lines written within the same microsecond would share a timestamp: keep
        # each file's timestamps strictly increasing (consumers sort and dedupe on time).
        us = max(round(time.time() * 1e6), self._last_us[path] + 1)
        self._last_us[path] = us
        return us / 1e6


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
    ) -> None:
        self.root = Path(root)
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.idle_timeout = idle_timeout
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
        return f"ftp://{who}{self.host}:{self.port}/{path.lstrip('/')}"

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

        class DTP(DTPHandler):
            def close(self) -> None:
                # Counted before the 226 reply goes out, so that a client that has its
                # reply also sees the count.
                if not self._closed and self.transfer_finished and self.cmd == "RETR":
                    owner._count("transfers")
                super().close()

        class Handler(FTPHandler):
            def handle_auth_success(self, home, password, msg_login):
                owner._count("logins")
                super().handle_auth_success(home, password, msg_login)

        Handler.authorizer = authorizer
        Handler.dtp_handler = DTP
        Handler.timeout = self.idle_timeout
        Handler.auth_failed_timeout = 0.1  # pyftpdlib waits 3 s before a 530: slow for tests
        Handler.banner = "headrace demo FTP server ready."
        return Handler
