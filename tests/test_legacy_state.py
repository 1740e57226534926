"""A state directory written by headrace 0.1 (top-level ``etl``) loads and continues.

The fixture in tests/data/state-0.1 was made by the 0.1 loop (see its README): seq 1
published, the rows of the last open 25 ms period in a carry that 0.1 pickled as
``etl.transforms.Carry``. Today's loop must load that carry, continue with seq 2 and
publish every period of the lines appended since exactly once, with nothing lost from
the carry.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from distributed import Client, LocalCluster

from headrace.etl import contract
from headrace.etl.config import load
from headrace.etl.loop.ticks import run_streams
from headrace.etl.store.pickles import value
from headrace.etl.store.state import StateStore
from headrace.etl.transforms import Carry

FIXTURE = Path(__file__).parent / "data" / "state-0.1"
PERIOD = pd.Timedelta("25ms")


@pytest.fixture
def old_state(tmp_path: Path) -> Path:
    for f in FIXTURE.iterdir():
        shutil.copy(f, tmp_path / f.name)
    (tmp_path / "state").mkdir()
    for name in ("state.sqlite", "deadletters.sqlite", "history.sqlite"):
        shutil.move(tmp_path / name, tmp_path / "state" / name)
    return tmp_path


def test_the_fixture_is_a_state_of_the_old_layout(old_state: Path) -> None:
    db = sqlite3.connect(old_state / "state" / "state.sqlite")
    (carry,) = db.execute("SELECT carry FROM streams WHERE name = 'cpu'").fetchone()
    db.close()
    assert b"etl.transforms" in carry and b"headrace" not in carry


def test_an_old_carry_loads_as_todays_class(old_state: Path) -> None:
    store = StateStore(old_state / "state")
    checkpoint = store.load("cpu")
    store.close()
    assert checkpoint.next_seq == 2
    assert isinstance(checkpoint.carry, Carry) and len(checkpoint.carry.rows) > 0
    assert checkpoint.totals["lines"] == 401 and checkpoint.totals["malformed"] == 1


def _times(path: Path) -> pd.DatetimeIndex:
    stamps = [line.split()[0] for line in path.read_text().splitlines() if line[:2] == "20"]
    return pd.to_datetime(stamps, utc=True)


def test_the_loop_continues_an_old_state_with_every_period_once(
    old_state: Path, cluster_options, monkeypatch
) -> None:
    monkeypatch.chdir(old_state)  # the config's source is a path relative to where it runs
    log = old_state / "metric.log"
    last = _times(log)[-1]
    with log.open("a") as f:  # 200 more lines, 10 ms apart, after the old ones
        for i in range(1, 201):
            stamp = (last + pd.Timedelta(milliseconds=10 * i)).isoformat().replace("+00:00", "Z")
            f.write(f"{stamp} {0.7 if i == 100 else 0.1:.3f}\n")
    config = load(old_state / "etl.yaml")
    store = StateStore(config.state_dir)

    async def run() -> tuple[list, list[tuple[int, pd.DataFrame]]]:
        with LocalCluster(**cluster_options) as cluster:
            async with Client(cluster.scheduler_address, asynchronous=True) as client:
                stop, runners = asyncio.Event(), []
                task = asyncio.create_task(
                    run_streams(client, config.streams, store, 100, stop, runners)
                )
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline and not (
                    runners and runners[0].state.cursor.offset == log.stat().st_size
                ):
                    if task.done():
                        task.result()
                    await asyncio.sleep(0.05)
                stop.set()
                await task
                return runners, await contract.FrameStream("cpu", client).read()

    runners, frames = asyncio.run(run())
    store.close()
    state = runners[0].state
    assert state.cursor.offset == log.stat().st_size, "the new lines were not all read"
    assert [seq for seq, _ in frames] == list(range(2, state.next_seq))
    assert state.totals["lines"] == 601 and state.totals["malformed"] == 1

    history = sqlite3.connect(old_state / "state" / "history.sqlite")
    old_rows = pd.to_datetime(
        [t for (t,) in history.execute("SELECT time FROM headrace_rows ORDER BY time")], utc=True
    )
    history.close()
    new_rows = pd.concat([f for _, f in frames])["time"]
    published = np.concatenate([old_rows.floor(PERIOD), new_rows.dt.floor(PERIOD)])
    assert len(published) == len(set(published)), "a period was published twice"
    # every period of every line, but for the newest, still open (held in the carry)
    periods = set(_times(log).floor(PERIOD))
    held = set(value(state.carry).rows.frame()["time"].dt.floor(PERIOD))
    assert set(published) | held == periods and not (held & set(published))
