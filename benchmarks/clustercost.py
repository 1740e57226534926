"""Cost of the cluster: the Dask part of a tick, from submit to a subscriber holding the frame.

In one process, as the embedded setup runs it: a ``LocalCluster`` with two single-thread
worker processes, the loop's ``Ticker`` of one demo stream (40 lines/s on the
benchmark's FTP server) and a second client acting as a Panel process's subscriber
(``headrace.etl.contract.subscribe_all``, then ``FrameStream.read`` of the announced seq). Per tick:

- ``submit -> published``: from ``tick()`` being called (the tick's task submitted)
  to the subscriber receiving the frame's event; split into ``extract+transform``
  (to the event's ``published`` stamp, taken just before publishing) and
  ``publish+notify`` (dataset, head, event);
- ``published -> fetched``: event received to the frame fetched by the subscriber;
- ``total``: submit to fetched.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from .common import log, percentiles
from .data import feed


async def _measure(url: str, state_dir: Path, ticks: int, interval: float, warmup: int) -> dict:
    from distributed import Client, LocalCluster

    from headrace.etl import contract
    from headrace.etl.contract.batch import TickPublisher
    from headrace.etl.loop.runner import StreamRunner
    from headrace.etl.loop.ticks import Ticker
    from headrace.etl.store.state import StateStore
    from headrace.etl.streams import Stream
    from headrace.etl.transforms import Resample

    stream = Stream("bench", url, transform=Resample("25ms", agg="max"), interval=interval)
    heard: dict[int, tuple[float, float]] = {}  # seq -> (event received, event.published)
    fetched: dict[int, float] = {}
    fetches: set[asyncio.Task] = set()

    async with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            scheduler_port=0,
            dashboard_address="127.0.0.1:0",
            host="127.0.0.1",
            asynchronous=True,
            silence_logs=logging.CRITICAL,  # workers' heartbeat errors while closing
        ) as cluster,
        Client(cluster, asynchronous=True) as loop_client,
        Client(cluster, asynchronous=True) as sub_client,
    ):

        async def fetch(seq: int) -> None:
            frames = await contract.FrameStream("bench", sub_client).read(seq - 1, seq)
            if frames:
                fetched[seq] = time.time()

        def on_event(event: contract.Event) -> None:
            # Never await in the handler (it would block the client's stream): schedule.
            heard[event.seq] = (time.time(), event.published)
            task = asyncio.create_task(fetch(event.seq))
            fetches.add(task)
            task.add_done_callback(fetches.discard)

        contract.subscribe_all(sub_client, on_event)
        await asyncio.sleep(0.5)  # the subscription must reach the scheduler first
        store = StateStore(state_dir)
        runner = StreamRunner(stream, store)
        ticker = Ticker(loop_client, [runner], store, TickPublisher(loop_client, 64), interval)
        submits: dict[int, float] = {}
        try:
            for i in range(ticks + warmup):
                t = time.time()
                before = runner.health.published
                await ticker.tick()
                seq = runner.health.published
                if seq != before and i >= warmup:
                    submits[seq] = t
                await asyncio.sleep(max(0.0, interval - (time.time() - t)))
            await asyncio.sleep(1.0)
        finally:
            store.close()
    seqs = [s for s in submits if s in heard and s in fetched]
    parts = {
        "submit_to_published": [heard[s][0] - submits[s] for s in seqs],
        "extract_transform": [heard[s][1] - submits[s] for s in seqs],
        "publish_notify": [heard[s][0] - heard[s][1] for s in seqs],
        "published_to_fetched": [fetched[s] - heard[s][0] for s in seqs],
        "total": [fetched[s] - submits[s] for s in seqs],
    }
    out: dict = dict(ticks=len(submits), measured=len(seqs), interval=interval)
    for name, values in parts.items():
        p50, p99 = percentiles(np.asarray(values) * 1000, (50, 99))
        out[name] = dict(median_ms=p50, p99_ms=p99)
    return out


def run(ticks: int = 100, interval: float = 0.2, warmup: int = 5) -> dict:
    with (
        tempfile.TemporaryDirectory(prefix="headrace-bench-cluster-") as tmp,
        feed(Path(tmp) / "ftp", streams=["bench"]) as f,
    ):
        time.sleep(0.5)
        log(f"cluster: {ticks} ticks every {interval}s on a LocalCluster")
        try:
            out = asyncio.run(
                _measure(f.url("bench"), Path(tmp) / "state", ticks, interval, warmup)
            )
        except Exception as exc:
            return dict(error=f"{type(exc).__name__}: {exc}"[:300])
    log(
        f"cluster: submit->published {out['submit_to_published']['median_ms']:.1f} ms median, "
        f"published->fetched {out['published_to_fetched']['median_ms']:.1f} ms"
    )
    return out
