"""A real, throwaway PostgreSQL server for the tests (Debian's binaries, run as ``postgres``).

``postgres_server()`` initialises a cluster in a temporary directory under /tmp, starts it on
a free port of 127.0.0.1 (its unix socket in that directory too), creates the database
``headrace`` and yields a ``PostgresServer``; afterwards it stops the server and removes the
directory. PostgreSQL refuses to run as root, so as root the binaries run as the ``postgres``
user (``runuser``) in a directory that user owns; as anyone else they run as that user.
Without the binaries (``./run test`` installs them as root) the caller is skipped.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from ports import free_port

DATABASE = "headrace"
SUPERUSER = "postgres"
# A test server: no durability, little memory.
SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "'32MB'",
    "max_connections": "50",
}


def find_bindir() -> Path | None:
    """The bin directory of the newest PostgreSQL under /usr/lib/postgresql, if any."""
    found = glob.glob("/usr/lib/postgresql/*/bin/initdb")

    def version(path: str) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", Path(path).parent.parent.name))

    return Path(max(found, key=version)).parent if found else None


class PostgresServer:
    """One PostgreSQL cluster in ``root``; ``start()`` and ``stop()`` keep its port."""

    def __init__(self, bindir: Path, root: Path, port: int, as_user: str | None) -> None:
        self.bindir = bindir
        self.root = root
        self.datadir = root / "data"
        self.logfile = root / "postgres.log"
        self.port = port
        self.host = "127.0.0.1"
        self.as_user = as_user
        self.running = False

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the ``headrace`` database."""
        return self.database_url(DATABASE)

    def database_url(self, database: str) -> str:
        return f"postgresql+psycopg://{SUPERUSER}@{self.host}:{self.port}/{database}"

    def _run(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bindir / tool), *args]
        if self.as_user:
            cmd = ["runuser", "-u", self.as_user, "--", *cmd]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        # cwd: the postgres user may not be allowed into the caller's directory.
        return subprocess.run(
            cmd, cwd=self.root, env=env, capture_output=True, text=True, timeout=120
        )

    def _check(self, tool: str, *args: str) -> None:
        done = self._run(tool, *args)
        if done.returncode != 0:
            log = self.logfile.read_text() if self.logfile.exists() else ""
            raise RuntimeError(
                f"{tool} {' '.join(args)} failed ({done.returncode}):\n"
                f"{done.stdout}{done.stderr}{log[-2000:]}"
            )

    def init(self) -> None:
        self._check(
            "initdb", "-D", str(self.datadir), "-A", "trust", "-U", SUPERUSER,
            "-E", "UTF8", "--locale=C", "--no-sync",
        )  # fmt: skip
        settings = {**SETTINGS, "port": str(self.port), "unix_socket_directories": f"'{self.root}'"}
        with open(self.datadir / "postgresql.conf", "a") as f:
            f.write("\n# tests/postgres.py\n")
            f.writelines(f"{key} = {value}\n" for key, value in settings.items())

    @property
    def _pg_ctl_options(self) -> tuple[str, ...]:
        return ("-D", str(self.datadir), "-w", "-t", "60")

    def start(self) -> None:
        """Start the server (same data, same port) and wait until it accepts connections."""
        if not self.running:
            self._check("pg_ctl", *self._pg_ctl_options, "-l", str(self.logfile), "start")
            self.running = True

    def stop(self) -> None:
        """Stop the server (fast shutdown: open connections are dropped) and wait for it."""
        if self.running:
            self._check("pg_ctl", *self._pg_ctl_options, "-m", "fast", "stop")
            self.running = False

    @contextlib.contextmanager
    def down(self) -> Iterator[None]:
        """The server is stopped inside the block and started again after it, however it ends."""
        self.stop()
        try:
            yield
        finally:
            self.start()

    def create_database(self, name: str) -> str:
        """Create database ``name`` and return its SQLAlchemy URL."""
        dsn = f"host={self.host} port={self.port} user={SUPERUSER} dbname=postgres"
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.database_url(name)


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """A running server with an empty database ``headrace``; stopped and removed afterwards."""
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL not installed (no /usr/lib/postgresql/*/bin/initdb)")
    as_user = None
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam(SUPERUSER)
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run PostgreSQL as")
        if shutil.which("runuser") is None:
            pytest.skip("running as root and runuser is missing: cannot run PostgreSQL")
        as_user = SUPERUSER
    root = Path(tempfile.mkdtemp(prefix="headrace-pg-", dir="/tmp"))
    if as_user:
        os.chown(root, owner.pw_uid, owner.pw_gid)
    server = PostgresServer(bindir, root, free_port(), as_user)
    try:
        try:
            server.init()
        except RuntimeError as e:
            if as_user:
                raise
            pytest.skip(f"cannot run PostgreSQL as user {pwd.getpwuid(os.geteuid()).pw_name}: {e}")
        server.start()
        server.create_database(DATABASE)
        yield server
    finally:
        try:
            server.stop()
        except RuntimeError:
            server._run("pg_ctl", *server._pg_ctl_options, "-m", "immediate", "stop")
            raise
        finally:
            shutil.rmtree(root, ignore_errors=True)
