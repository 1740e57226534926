"""The databases the loop keeps things in: URLs and their passwords, engines, the state's tables.

The loop's state (cursors, carries, sequence numbers, the history backlog, dead letters and
the lease of the active loop) lives either in SQLite files in the state directory (the
default: nothing to set up on one host) or in a SQL database named by ``state: {url: ...}``
(PostgreSQL, SQL Server, or SQLite elsewhere): the same tables through SQLAlchemy, so that
two loops on two hosts can share it and one can take over from the other.

In a state directory the tables keep the names they always had (``streams``, ``backlog``,
``lease`` in ``state.sqlite``; ``deadletters`` in ``deadletters.sqlite``), so that old
directories load; in a database they are prefixed ``headrace_state_``.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

PREFIX = "headrace_state_"  # the tables' names in a database of their own
DEFAULT_LEASE = 1.0  # seconds without a beat of the active loop before a standby takes over
NAME = sa.String(255)  # stream names: a key SQL Server can index (it cannot index TEXT)
# Row ids in the order rows were added: SQLite's own rowid there (INTEGER PRIMARY KEY).
ROW_ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def resolve_url(url: str, password_env: str | None) -> sa.URL:
    """``url`` with the password from ``password_env`` (when set), ready for an engine."""
    made = sa.make_url(url)
    if password_env:
        password = os.environ.get(password_env)
        if password is None:
            raise ValueError(f"environment variable {password_env} is not set")
        made = made.set(password=password)
    return made


def shown(url: str | sa.URL | None) -> str:
    """A URL with any password hidden: safe to log."""
    return sa.make_url(url or "sqlite://").render_as_string(hide_password=True)


def check_url(url: object) -> str:
    try:
        sa.make_url(str(url))
    except sa.exc.ArgumentError:
        raise ValueError("url is not a SQLAlchemy database URL") from None
    return str(url)


def make_engine(url: sa.URL | str) -> sa.Engine:
    """An engine; SQLite files in WAL mode, waiting for each other's writes for up to 5 s."""
    engine = sa.create_engine(url, pool_pre_ping=True)
    if engine.dialect.name == "sqlite":
        sa.event.listen(engine, "connect", _sqlite_wal)
    return engine


def bound_transactions(engine: sa.Engine, seconds: float) -> None:
    """PostgreSQL ends a session of ``engine`` that sits inside a transaction for longer
    than ``seconds`` (``idle_in_transaction_session_timeout``), releasing its locks.

    Every commit of the active loop begins by updating the lease's row (its fence): a loop
    paused in the middle of one (SIGSTOP, a frozen VM) would hold that row's lock for as
    long as its connection lives, and a standby's takeover would wait behind it. A loop
    idle inside a transaction for as long as the lease's silence has lost the lease
    anyway. Other databases keep their own behaviour.
    """
    if engine.dialect.name != "postgresql" or seconds <= 0:
        return
    timeout = max(int(seconds * 1000), 1)

    def bound(dbapi_connection: Any, _record: Any) -> None:
        with dbapi_connection.cursor() as cursor:
            cursor.execute(f"SET idle_in_transaction_session_timeout = {timeout}")
        dbapi_connection.commit()

    sa.event.listen(engine, "connect", bound)
    engine.dispose()  # connections made before are made again, bounded


def create_tables(engine: sa.Engine, metadata: sa.MetaData, attempts: int = 3) -> None:
    """The tables of ``metadata`` that do not exist yet, and the columns that tables from
    before those columns were kept lack (they are nullable: a row without them reads as
    before).

    Two loops started at once on a new or old state both find a table or column missing
    and both add it; one of them fails (SQLite: the table or column already exists;
    PostgreSQL: a duplicate type name) and, looking again, finds it.
    """
    for attempt in range(attempts):
        try:
            metadata.create_all(engine)
            with engine.begin() as conn:
                for table in metadata.sorted_tables:
                    _add_columns(conn, table)
            return
        except sa.exc.SQLAlchemyError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))


def _add_columns(conn: sa.Connection, table: sa.Table) -> None:
    have = {c["name"] for c in sa.inspect(conn).get_columns(table.name)}
    for column in table.columns:
        if column.name not in have:
            kind = column.type.compile(dialect=conn.dialect)
            quoted = conn.dialect.identifier_preparer.quote(column.name)
            conn.execute(sa.text(f"ALTER TABLE {table.name} ADD COLUMN {quoted} {kind}"))


def reason(exc: BaseException) -> str:
    """A database error in the database's words (SQLAlchemy's wrapping and link left out)."""
    orig = getattr(exc, "orig", None)
    return str(orig if orig is not None else exc)


def _sqlite_wal(dbapi_connection: object, _record: object) -> None:
    # WAL: readers (the dashboards, the writer) never wait for the loop's writes, nor it for
    # them; NORMAL: a commit survives the process being killed, which is the failure that
    # matters here (only a power cut may lose the last ticks).
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


@dataclass(frozen=True)
class StateSpec:
    """Where the loop's state lives when not in the state directory (``state:`` in YAML).

    ``lease``: seconds the active loop may go without a beat before a standby takes over.
    """

    url: str
    password_env: str | None = None
    lease: float = DEFAULT_LEASE

    @classmethod
    def parse(cls, raw: Any) -> StateSpec:
        """From ``{url: ..., password_env: ..., lease: 1s}``, or a bare URL."""
        if isinstance(raw, str):
            raw = {"url": raw}
        if not isinstance(raw, dict):
            raise ValueError(f"expected {{url: ..., lease: 1s}}, got {raw!r}")
        unknown = set(raw) - {"url", "password_env", "lease"}
        if unknown:
            raise ValueError(f"unknown settings {sorted(unknown)}: use url, password_env, lease")
        if "url" not in raw:
            raise ValueError("url is missing: the SQLAlchemy URL of the state's database")
        lease = raw.get("lease", DEFAULT_LEASE)
        seconds = seconds_of(lease)
        if not 0.2 <= seconds <= 600:
            raise ValueError(f"lease must be between 0.2s and 10min, got {lease!r}")
        password_env = raw.get("password_env")
        return cls(check_url(raw["url"]), str(password_env) if password_env else None, seconds)

    def engine_url(self) -> sa.URL:
        return resolve_url(self.url, self.password_env)

    def display(self) -> str:
        return shown(self.url)


def seconds_of(value: object) -> float:
    """``1.5``, ``"1.5"``, ``"1500ms"`` or ``"2s"`` in seconds."""
    text = str(value).strip()
    match = re.fullmatch(r"(\d+(?:\.\d*)?)\s*(ms|s|min)?", text)
    if match is None:
        raise ValueError(f"{value!r} is not a duration such as 1s or 500ms")
    number, unit = float(match[1]), match[2] or "s"
    return number * {"ms": 0.001, "s": 1.0, "min": 60.0}[unit]


@dataclass(frozen=True)
class Tables:
    """The state's tables, named for where they live (see the module's docstring)."""

    metadata: sa.MetaData
    streams: sa.Table
    backlog: sa.Table
    lease: sa.Table


def state_tables(prefix: str = "") -> Tables:
    metadata = sa.MetaData()
    streams = sa.Table(
        f"{prefix}streams",
        metadata,
        sa.Column("name", NAME, primary_key=True),
        sa.Column("offset", sa.BigInteger, nullable=False),
        sa.Column("line", sa.BigInteger, nullable=False),
        sa.Column("tail", sa.LargeBinary, nullable=False),
        sa.Column("fingerprint", sa.LargeBinary, nullable=False),
        sa.Column("next_seq", sa.BigInteger, nullable=False),
        sa.Column("carry", sa.LargeBinary),
        sa.Column("pending_until", sa.BigInteger),
        sa.Column("updated", sa.Float, nullable=False),
        sa.Column("totals", sa.Text),
        sa.Column("head", sa.LargeBinary),
        sa.Column("phase", sa.String(32)),
        sa.Column("mtime", sa.String(64)),
        sa.Column("inode", sa.BigInteger),
    )
    backlog = sa.Table(
        f"{prefix}backlog",
        metadata,
        sa.Column("id", ROW_ID, primary_key=True),
        sa.Column("stream", NAME, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("frame", sa.LargeBinary, nullable=False),
        sa.Column("added", sa.Float, nullable=False),
        sqlite_autoincrement=True,  # ids never reused: the writer deletes what it read by id
    )
    lease = sa.Table(
        f"{prefix}lease",
        metadata,
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("lineage", sa.String(32), nullable=False),  # this state's, made with the row
        sa.Column("holder", sa.String(255)),  # NULL: released
        sa.Column("epoch", sa.BigInteger, nullable=False),
        sa.Column("beat", sa.BigInteger, nullable=False),
        sa.Column("since", sa.Float, nullable=False),  # the holder's clock, for people only
    )
    return Tables(metadata, streams, backlog, lease)


def deadletter_table(prefix: str = "") -> tuple[sa.MetaData, sa.Table]:
    metadata = sa.MetaData()
    name = f"{prefix}deadletters"
    table = sa.Table(
        name,
        metadata,
        sa.Column("id", ROW_ID, primary_key=True),
        sa.Column("stream", NAME, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("line", sa.BigInteger, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("seen", sa.Float, nullable=False),
        sa.UniqueConstraint("stream", "seq", "line"),
        sa.Index(f"{name}_stream", "stream", "id"),
        sqlite_autoincrement=True,
    )
    return metadata, table


@dataclass(frozen=True)
class Location:
    """Where one store of the state is: an engine URL, the table prefix, and what to name."""

    url: sa.URL
    prefix: str
    path: Path | None  # the SQLite file in a state directory, else None
    display: str


def locate(directory: str | os.PathLike, filename: str, database: StateSpec | None) -> Location:
    """The state's ``filename`` in ``directory``, or its tables in ``database``."""
    if database is not None:
        return Location(database.engine_url(), PREFIX, None, database.display())
    path = Path(directory) / filename
    return Location(sa.make_url(f"sqlite:///{path.absolute()}"), "", path, str(path))
