"""`headrace state move`: a state directory to PostgreSQL and back, nothing lost."""

from __future__ import annotations

import os
from threading import Event, Thread

import pytest
from click.testing import CliRunner

from headrace.cluster.cli import main
from headrace.etl.parse.parser import Malformed
from headrace.etl.sources.base import Cursor
from headrace.etl.store.database import StateSpec
from headrace.etl.store.deadletter import DeadLetterStore
from headrace.etl.store.lease import Lease
from headrace.etl.store.state import Checkpoint, StateError, StateStore


def fill(directory) -> None:
    store, dead = StateStore(directory), DeadLetterStore(directory)
    lease = Lease(store, 0.2)
    assert lease.try_acquire()  # a loop ran here: the lease has a lineage and an epoch
    for i in range(3):
        state = Checkpoint(
            cursor=Cursor(offset=100 * i, line=10 * i, tail=b"half a li", fingerprint=b"f" * 8),
            next_seq=i + 5,
            carry={"open": [i, i + 1]},
            pending_until=None,
            totals={"lines": 10 * i},
        )
        store.save(f"s{i}", state, 1.0, queue=f"frame {i}".encode())
    dead.add("s1", 4, [Malformed(7, "no time", "garbage", "s1.log")])
    lease.release()
    store.close()
    dead.close()


def snapshot(directory, database=None) -> tuple:
    store, dead = StateStore(directory, database), DeadLetterStore(directory, database=database)
    try:
        states = {n: store.load(n) for n in sorted(store.names())}
        backlog = [(q.stream, q.seq, q.frame) for q in store.queued(100)]
        letters = [(d.stream, d.seq, d.line, d.text) for d in dead.recent("s1")]
        epoch = Lease(store, 1).current()
        return states, backlog, letters, (epoch.lineage, epoch.epoch) if epoch else None
    finally:
        store.close()
        dead.close()


def test_a_state_moves_to_postgresql_and_back_with_nothing_lost(tmp_path, postgres):
    url = postgres.create_database(f"move{os.getpid()}")
    fill(tmp_path / "a")
    before = snapshot(tmp_path / "a")
    assert len(before[0]) == 3 and len(before[1]) == 3 and before[2]
    run = CliRunner().invoke
    there = run(main, ["state", "move", str(tmp_path / "a"), url])
    assert there.exit_code == 0, there.output
    assert "moved 3 streams, 3 backlog frames and 1 dead letters" in there.output
    lineage, epoch = before[3]
    # Each move holds the lease once, as a loop would: one epoch more.
    assert snapshot(tmp_path, StateSpec(url)) == (*before[:3], (lineage, epoch + 1))
    assert snapshot(tmp_path / "a")[:3] == ({}, [], [])  # the source is emptied
    # A loop started on the old place says where the state went, and does not start afresh.
    with pytest.raises(StateError, match="moved to postgresql"):
        Lease(StateStore(tmp_path / "a"), 1).try_acquire()
    back = run(main, ["state", "move", url, str(tmp_path / "b")])
    assert back.exit_code == 0, back.output
    assert snapshot(tmp_path / "b") == (*before[:3], (lineage, epoch + 2))
    # The next loop goes on from the moved lease: same lineage, the next epoch.
    lease = Lease(StateStore(tmp_path / "b"), 1)
    assert lease.try_acquire() and lease.token() == (lineage, epoch + 3)
    missing = run(main, ["state", "move", str(tmp_path / "typo"), url])
    assert missing.exit_code == 1 and "no state in" in missing.output
    assert not (tmp_path / "typo").exists()


def test_a_move_is_refused_while_a_loop_holds_the_state_or_onto_a_state(tmp_path):
    fill(tmp_path / "a")
    fill(tmp_path / "b")
    run = CliRunner().invoke
    onto = run(main, ["state", "move", str(tmp_path / "a"), str(tmp_path / "b")])
    assert onto.exit_code == 1 and "already holds the state of 3 streams" in onto.output

    holder = Lease(StateStore(tmp_path / "a"), 0.2)
    assert holder.try_acquire()
    done = Event()

    def beat() -> None:
        while not done.wait(0.05):
            holder.renew()

    beating = Thread(target=beat)
    beating.start()
    try:
        busy = run(main, ["state", "move", str(tmp_path / "a"), str(tmp_path / "c")])
    finally:
        done.set()
        beating.join()
    assert busy.exit_code == 1 and "a loop holds the state" in busy.output
    assert "stop it first" in busy.output
    assert len(snapshot(tmp_path / "a")[0]) == 3  # nothing moved
