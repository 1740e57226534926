"""Fixtures shared by the test suite.

Nothing imported here may import ``distributed``: imported this early (before pytest's
log capture is set up) it configures its logging differently, and every ``LocalCluster``
then turns pytest's capture handlers down to WARNING (its ``silence_logs``), which hides
INFO lines from ``caplog`` (seen with distributed 2026.8).
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faultreport
import pytest
from postgres import PostgresServer, postgres_server

from headrace.cluster.demo.ftpserver import FTPServer

FTP_USER = "alice"
FTP_PASSWORD = "s3cret-PW"

# Threads keep test clusters fast (tests that need worker processes say so). tcp, not
# inproc: over inproc a published Future is passed by reference and dies with its
# publishing client. Loopback and free ports, for the scheduler and its dashboard.
CLUSTER_OPTIONS: dict[str, Any] = dict(
    n_workers=1,
    threads_per_worker=2,
    processes=False,
    protocol="tcp://",
    host="127.0.0.1",
    scheduler_port=0,
    dashboard_address=":0",
)


@pytest.fixture(autouse=True)
def _thaw() -> Iterator[None]:
    """A Panel server run in the test process freezes what lives after each session's
    build (headrace.app.live.heap): later tests' garbage must not stay frozen with it."""
    yield
    gc.unfreeze()


@pytest.fixture(scope="module")
def two_workers(cluster_options: dict[str, Any]) -> Iterator[Any]:
    """A cluster of two single-threaded workers for a module's loop runs."""
    from distributed import LocalCluster  # here: see the module's docstring

    with LocalCluster(**{**cluster_options, "n_workers": 2, "threads_per_worker": 1}) as c:
        yield c


@pytest.fixture(scope="session")
def cluster_options() -> dict[str, Any]:
    """Keyword arguments of ``LocalCluster`` for a test cluster (a fresh copy each time)."""
    return dict(CLUSTER_OPTIONS)


class RootFiles:
    """Write, append to and replace files under a directory (the FTP server's root)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, name: str) -> Path:
        return self.root / name

    def write(self, name: str, data: bytes) -> Path:
        path = self.path(name)
        path.write_bytes(data)
        return path

    def append(self, name: str, data: bytes) -> Path:
        path = self.path(name)
        with open(path, "ab") as f:
            f.write(data)
        return path

    def replace(self, name: str, data: bytes) -> Path:
        """Replace the file by a new one (another inode), as log rotation does."""
        tmp = self.path(name + ".new")
        tmp.write_bytes(data)
        os.replace(tmp, self.path(name))
        return self.path(name)


@pytest.fixture
def ftp_root(tmp_path: Path) -> Path:
    root = tmp_path / "ftp"
    root.mkdir()
    return root


@pytest.fixture
def ftp_files(ftp_root: Path) -> RootFiles:
    return RootFiles(ftp_root)


@pytest.fixture
def ftp_server(ftp_root: Path) -> Iterator[FTPServer]:
    """A server on a free port of 127.0.0.1, user ``alice``, password ``s3cret-PW``."""
    server = FTPServer(ftp_root, user=FTP_USER, password=FTP_PASSWORD)
    with server:
        yield server


@pytest.fixture
def vsftpd_server(ftp_root: Path, tmp_path: Path) -> Iterator[Any]:
    """Debian's vsftpd serving ``ftp_root`` over plain FTP, anonymous and read-only."""
    from vsftpd import vsftpd  # imports distributed (see above)

    with vsftpd(ftp_root, tmp_path) as server:
        yield server


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL server for the session (skipped if not installed), see tests/postgres.py.

    ``.url`` is the SQLAlchemy URL of its database ``headrace``; ``.stop()`` and ``.start()``
    (or ``with postgres.down():``) take it down and up again on the same port. A test that
    stops it must start it again (``down()`` does): the server is shared by the session.
    """
    with postgres_server() as server:
        yield server


FAULT_TESTS: set[str] = set()  # every fault-suite test collected, before -m/-k


def pytest_sessionstart(session: pytest.Session) -> None:
    faultreport.start()


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Browser and fault tests count as slow: the quick run, ``-m "not slow"``, leaves
    them out (markers in pyproject.toml)."""
    for item in items:
        if item.get_closest_marker("browser") or item.get_closest_marker("fault"):
            item.add_marker(pytest.mark.slow)
    FAULT_TESTS.update(i.nodeid for i in items if i.get_closest_marker("fault"))


def pytest_terminal_summary(terminalreporter) -> None:
    table = faultreport.table()
    if table:
        terminalreporter.section("reliability (the fault suite's figures)")
        terminalreporter.write_line(table)
        config = terminalreporter.config
        passed, failed = (
            [r.nodeid for r in terminalreporter.stats.get(k, [])] for k in ("passed", "failed")
        )
        # Only a run of the whole fault suite replaces the table: a run of one test would
        # leave a one-row table behind.
        whole = not config.option.keyword and all(
            Path(a).resolve() == Path(__file__).parent for a in config.args
        )
        complete = whole and FAULT_TESTS and set(passed) >= FAULT_TESTS
        command = " ".join(["pytest", *config.invocation_params.args])
        written = faultreport.write_doc(table, command, passed, failed) if complete else None
        if written:
            terminalreporter.write_line(f"written to {written}")
