"""The state in a database and the lease of the active loop: taken, kept, lost, fenced.

Two loops are two :class:`Lease` objects on one state (their own engines), as two
processes would be; a real PostgreSQL where the loop's state would live on two hosts.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pandas as pd
import pytest
import sqlalchemy as sa
from distributed import Client, LocalCluster

from headrace.etl.config import parse
from headrace.etl.contract import Span
from headrace.etl.contract.batch import FencedOut, Outgoing, TickPublisher, _announcer
from headrace.etl.parse.parser import Malformed
from headrace.etl.sources.base import Cursor
from headrace.etl.store.database import StateSpec, deadletter_table, state_tables
from headrace.etl.store.deadletter import DeadLetterStore
from headrace.etl.store.lease import Fenced, Lease
from headrace.etl.store.state import Checkpoint, StateStore
from headrace.etl.streams import ConfigError

TTL = 0.3


@pytest.fixture(params=["sqlite", "postgresql"])
def state(request, tmp_path):
    """(directory, database spec or None): where two loops of one state keep it."""
    if request.param == "sqlite":
        return tmp_path, None
    url = request.getfixturevalue("postgres").create_database(
        f"lease{os.getpid()}_{time.time_ns()}"
    )
    return tmp_path, StateSpec(url, lease=TTL)


def stores(state, n=2):
    return [StateStore(*state) for _ in range(n)]


def checkpoint(seq: int) -> Checkpoint:
    return Checkpoint(cursor=Cursor(offset=seq * 10, line=seq), next_seq=seq, totals={"lines": seq})


def test_the_state_round_trips_with_its_backlog(state):
    (store,) = stores(state, 1)
    store.save_many([("a", checkpoint(3), b"frame-2"), ("b", checkpoint(7), None)], 1.0)
    store.save("a", checkpoint(4), 2.0, queue=b"frame-3")
    assert store.load("a").next_seq == 4 and store.load("a").cursor.offset == 40
    assert store.load("b").totals == {"lines": 7} and store.load("missing").next_seq == 1
    assert sorted(store.names()) == ["a", "b"]
    queued = store.queued(10)
    assert [(q.stream, q.seq, q.frame) for q in queued] == [
        ("a", 2, b"frame-2"),
        ("a", 3, b"frame-3"),
    ]
    assert store.backlog() == (2, 14)
    store.unqueue([queued[0].id])
    assert [q.seq for q in store.queued(10)] == [3]
    store.close()


def test_one_loop_holds_the_lease_and_a_waiting_one_takes_it_once_it_is_silent(state):
    one, two = (Lease(s, TTL) for s in stores(state))
    assert one.try_acquire() and one.held and one.epoch == 1
    assert not two.try_acquire()
    # While the active one beats, the waiting one never takes over.
    for _ in range(4):
        time.sleep(TTL / 2)
        assert one.renew()
        assert not two.try_acquire()
    time.sleep(TTL * 1.2)  # one is silent (paused, say)
    assert two.try_acquire() and two.epoch == 2 and two.takeovers == 1
    assert two.lineage == one.lineage  # one state, one lineage: the scheduler fences by it
    # The paused loop resumes: its beat and its commits find the lease gone.
    assert not one.renew() and one.lost.is_set() and not one.held
    one.store.fence = one.fence
    with pytest.raises(Fenced, match="taken over"):
        one.store.save("s", checkpoint(9), 1.0)
    two.store.fence = two.fence
    two.store.save("s", checkpoint(2), 1.0)
    assert two.store.load("s").next_seq == 2  # the fenced commit wrote nothing


def test_a_released_lease_is_taken_at_the_next_look(state):
    one, two = (Lease(s, 60.0) for s in stores(state))
    assert one.try_acquire() and not two.try_acquire()
    one.release()
    assert not one.held and one.current().holder is None
    assert two.try_acquire() and two.epoch == 2


def test_of_two_loops_taking_a_silent_lease_one_wins(state):
    one, two, three = (Lease(s, TTL) for s in stores(state, 3))
    assert one.try_acquire()
    assert not two.try_acquire() and not three.try_acquire()  # both see it held
    time.sleep(TTL * 1.2)
    assert [two.try_acquire(), three.try_acquire()] == [True, False]
    assert three.current().holder == two.holder


def test_dead_letters_are_fenced_and_kept_once(state):
    directory, database = state
    one, two = (Lease(s, TTL) for s in stores(state))
    dead = DeadLetterStore(directory, database=database)
    dead.fence = one.check
    assert one.try_acquire()
    bad = [Malformed(n, "no time", "oops", "f.log") for n in (1, 2)]
    assert dead.add("s", 1, bad) == 2 and dead.add("s", 1, bad) == 0  # a replayed tick
    assert not two.try_acquire()  # it watches the beat from here
    time.sleep(TTL * 1.2)
    assert two.try_acquire()
    with pytest.raises(Fenced):
        dead.add("s", 2, bad)
    assert dead.count("s") == 2 and [d.line for d in dead.recent("s")] == [2, 1]
    dead.close()


def test_the_state_setting_names_what_is_wrong():
    streams = {"s": {"source": "/tmp/s.log"}}
    config = parse({"state": {"url": "sqlite:////tmp/x.db", "lease": "500ms"}, "streams": streams})
    assert config.state == StateSpec("sqlite:////tmp/x.db", None, 0.5)
    assert parse({"state": "postgresql://h/db", "streams": streams}).state.lease == 1.0
    for bad, says in [
        ({"url": "not a url"}, "not a SQLAlchemy database URL"),
        ({"lease": "1s"}, "url is missing"),
        ({"url": "sqlite://", "lease": "0.1s"}, "between 0.2s and 10min"),
        ({"url": "sqlite://", "lease": "soon"}, "not a duration"),
        ({"url": "sqlite://", "ttl": 1}, "unknown settings ['ttl']"),
    ]:
        with pytest.raises(ConfigError, match="state") as raised:
            parse({"state": bad, "streams": streams}, where="etl.yaml")
        assert says in str(raised.value) and "etl.yaml" in str(raised.value)


def test_the_state_tables_compile_for_sql_server():
    from sqlalchemy.dialects import mssql
    from sqlalchemy.schema import CreateIndex, CreateTable

    tables = state_tables("headrace_state_")
    _, dead = deadletter_table("headrace_state_")
    dialect = mssql.dialect()
    for table in [tables.streams, tables.backlog, tables.lease, dead]:
        str(CreateTable(table).compile(dialect=dialect))
        for index in table.indexes:
            str(CreateIndex(index).compile(dialect=dialect))
    # Keys SQL Server can index (it cannot index TEXT).
    assert "name VARCHAR(255) NOT NULL" in str(CreateTable(tables.streams).compile(dialect=dialect))
    b = tables.backlog
    oldest = sa.select(b.c.id).order_by(b.c.id).limit(100)
    assert "TOP" in str(oldest.compile(dialect=dialect))
    edge = sa.select(dead.c.id).order_by(dead.c.id.desc()).offset(5).limit(1)
    assert "ROW_NUMBER() OVER" in str(edge.compile(dialect=dialect))


def test_the_scheduler_refuses_a_publication_of_an_older_epoch(tmp_path):
    frame = pd.DataFrame({"time": pd.to_datetime([1], utc=True), "value": [1.0]})

    def out(seq: int) -> list[Outgoing]:
        return [Outgoing("s", seq, frame, Span(1, 1, 1), 0.2)]

    with (
        LocalCluster(n_workers=0, processes=False, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        new = TickPublisher(client, 8, lambda: ("lineage", 2))
        old = TickPublisher(client, 8, lambda: ("lineage", 1))
        other = TickPublisher(client, 8, lambda: ("another-state", 1))
        client.sync(new.publish, out(1))
        with pytest.raises(FencedOut, match="epoch 1 refused: a loop of epoch 2"):
            client.sync(old.publish, out(2))
        assert client.get_metadata(["headrace", "streams", "s"])["seq"] == 1
        client.sync(other.publish, out(5))  # a state of its own is fenced on its own
        assert client.get_metadata(["headrace", "streams", "s"])["seq"] == 5


def test_the_scheduler_needs_no_headrace_to_install_the_handler():
    code = (
        "import sys, pickle; sys.modules['headrace'] = None\n"
        "plugin = pickle.loads(sys.stdin.buffer.read())\n"
        "print(type(plugin).__name__)\n"
    )
    import cloudpickle

    got = subprocess.run(
        [sys.executable, "-c", code],
        input=cloudpickle.dumps(_announcer()),
        capture_output=True,
        check=True,
    )
    assert got.stdout.strip() == b"Announcer"  # nothing of headrace imported by reference


def test_loops_started_at_once_on_a_new_state_all_open_it(state):
    from concurrent.futures import ThreadPoolExecutor

    directory, database = state
    with ThreadPoolExecutor(6) as pool:  # as six processes would: each its own engine
        opened = list(pool.map(lambda _: StateStore(directory, database), range(6)))
        dead = list(pool.map(lambda _: DeadLetterStore(directory, database=database), range(6)))
        leases = list(pool.map(lambda s: Lease(s, TTL).try_acquire(), opened))
    assert sorted(leases) == [False] * 5 + [True]  # one holds it, five wait
    for store in [*opened, *dead]:
        store.close()


def test_a_database_outage_is_not_taken_for_a_silent_holder(postgres, tmp_path):
    url = postgres.create_database(f"outage{os.getpid()}")
    one, two = (Lease(StateStore(tmp_path, StateSpec(url, lease=TTL)), TTL) for _ in range(2))
    assert one.try_acquire() and not two.try_acquire()
    with postgres.down():
        for lease in (one, two):
            with pytest.raises(sa.exc.OperationalError):
                lease.try_acquire() if lease is two else lease.renew()
        time.sleep(TTL * 2)
    # Back: the waiting loop watches the beat for a whole lease again, and the holder
    # beats meanwhile: no takeover.
    assert not two.try_acquire()
    for _ in range(3):
        time.sleep(TTL / 2)
        assert one.renew() and not two.try_acquire()
    assert one.held and two.takeovers == 0


@pytest.mark.timeout(60)
def test_a_holder_paused_inside_its_commit_does_not_keep_a_standby_waiting(postgres, tmp_path):
    """The holder stops (SIGSTOP) between its fence and its commit, the lease's row locked:
    PostgreSQL ends its session after the lease's silence, and the standby takes over."""
    import threading

    url = postgres.create_database(f"paused{os.getpid()}")
    one, two = (Lease(StateStore(tmp_path, StateSpec(url, lease=TTL)), TTL) for _ in range(2))
    assert one.try_acquire() and not two.try_acquire()
    paused = one.store.engine.connect()
    transaction = paused.begin()
    one.fence(paused)  # the row is locked until this transaction ends: the holder stops here
    taken = threading.Event()

    def standby() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if two.try_acquire():
                taken.set()
                return
            time.sleep(TTL / 3)

    waiting = threading.Thread(target=standby, daemon=True)
    began = time.monotonic()
    waiting.start()
    waiting.join(25)
    assert taken.is_set() and two.epoch == 2, "the standby still waits behind the paused holder"
    assert time.monotonic() - began < 10 * TTL + 3
    with pytest.raises(sa.exc.DBAPIError):  # the paused holder resumes: its session ended
        transaction.commit()
    paused.close()
    assert not one.renew() and one.lost.is_set()
