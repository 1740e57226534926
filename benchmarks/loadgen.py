"""Many Bokeh viewers in one process: raw websocket sessions that decode only streamed rows.

Each viewer does what a browser does on the wire, and nothing more:

1. ``GET /dashboard`` (the server builds the session's document) and take the session
   token Bokeh embeds in the page;
2. open ``ws://host:port/dashboard/ws`` with subprotocols ``bokeh, <token>``;
3. send ``PULL-DOC-REQ`` (BokehJS does; the server serialises the whole document for it)
   and, once the reply is in, a ``document_ready`` event (Panel starts a session's
   periodic callbacks and ``onload`` work only then);
4. keep the connection open, answer pings, and decode only ``PATCH-DOC`` messages that
   carry ``ColumnsStreamed`` events: the ``time`` and ``value`` columns (numpy buffers)
   with the wall-clock arrival time. Everything else (the pulled document included) is
   skipped without parsing.

A viewer (:mod:`benchmarks.viewer`) is a minimal ``asyncio.Protocol`` (frames parsed from
the receive buffer in a callback, no coroutine per message) so that 200 viewers stay
cheap; the frames and Bokeh messages it writes are in :mod:`benchmarks.wsframes`. The
server never compresses (we offer no extension) and never masks.

Run as ``python -m benchmarks.loadgen --url http://127.0.0.1:5006/dashboard --viewers 20
--settle 3 --duration 20 --grace 3 --out rows.npz``. It prints JSON lines on stdout:
``connected``, ``window_start`` and ``window_end`` (``t``: wall-clock seconds of the
measurement window's bounds) and ``done``; rows go to the ``.npz`` file (see :func:`save`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import sys
import time
import urllib.request

import numpy as np

from .viewer import Viewer, open_viewer


def save(path: str, viewers: list[Viewer | None], meta: dict) -> None:
    """``.npz`` with, per viewer ``v`` and model ``m``: ``v{v}:{m}:time|value|arrival``.

    ``arrival`` has one entry per row (the arrival of the message that carried it).
    """
    arrays: dict[str, np.ndarray] = {}
    for i, v in enumerate(viewers):
        if v is None:
            continue
        for model, chunks in v.rows.times.items():
            arrays[f"v{i}:{model}:time"] = np.concatenate(chunks)
            arrays[f"v{i}:{model}:value"] = np.concatenate(v.rows.values[model])
            arrays[f"v{i}:{model}:arrival"] = np.repeat(
                np.asarray(v.rows.arrivals[model]), [len(c) for c in chunks]
            )
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(path, **arrays)


def _say(**event: object) -> None:
    print(json.dumps(event), flush=True)


REFUSED_AGAIN = 5.0  # seconds (to twice that) before a refused page is loaded again
PHASES = ("got", "upgraded", "ack", "doc", "first")  # Viewer.marks, in the order they come


async def join(args: argparse.Namespace) -> tuple[list[float | None], int, dict[str, list]]:
    """Open ``--join`` more viewers, one every ``--join-spacing`` s, 1 s into the window.

    Returns each one's time from its ``GET`` to its first live row (None: no row in
    time), how many failed to open, and each one's seconds from its ``GET`` to each of
    :data:`PHASES` (None where it never got there). They are closed once they have a
    row: what is measured is the cost of joining, to them and to the watchers.
    """
    await asyncio.sleep(1.0)
    first: list[float | None] = [None] * args.join
    phases: dict[str, list] = {name: [None] * args.join for name in PHASES}
    failed = 0

    async def one(i: int) -> None:
        nonlocal failed
        started = time.time()
        try:
            viewer = await open_viewer(args.url)
        except Exception:
            failed += 1
            return
        first[i] = await viewer.first_row(started)
        for name, at in viewer.marks.items():
            phases[name][i] = round(at - started, 4)
        viewer.close()

    tasks = []
    for i in range(args.join):
        tasks.append(asyncio.create_task(one(i)))
        await asyncio.sleep(args.join_spacing)
    await asyncio.gather(*tasks)
    return first, failed, phases


async def _prepared_settled(metrics_url: str, timeout: float = 120.0) -> float:
    """Wait until the server's sessions built ahead stop growing (as after a quiet while:
    the crowd comes to a server that had time to prepare); return how many there are."""
    loop = asyncio.get_running_loop()
    pattern = re.compile(r"^headrace_sessions_prepared\{[^}]*\} (\S+)$", re.M)

    def read() -> float:
        with urllib.request.urlopen(metrics_url, timeout=10) as reply:
            return sum(float(x) for x in pattern.findall(reply.read().decode()))

    deadline, last, since = time.time() + timeout, -1.0, time.time()
    while time.time() < deadline:
        now = await loop.run_in_executor(None, read)
        if now != last:
            last, since = now, time.time()
        elif time.time() - since >= 4:  # two telemetry periods without change
            break
        await asyncio.sleep(1.0)
    return last


async def run(args: argparse.Namespace) -> None:
    viewers: list[Viewer | None] = [None] * args.viewers
    errors: list[str] = []
    sem = asyncio.Semaphore(args.concurrency)

    refusals = 0

    async def one(i: int) -> None:
        nonlocal refusals
        while True:
            async with sem:
                try:
                    viewers[i] = viewer = await open_viewer(args.url)
                except Exception as exc:  # counted and reported, the others go on
                    errors.append(f"{type(exc).__name__}: {exc}"[:200])
                    return
            await viewer.closed
            if not viewer.refused:
                return
            # Refused (too many opens waiting in its process): loaded again a while later,
            # as a person would.
            refusals += 1
            await asyncio.sleep(REFUSED_AGAIN * (1 + random.random()))

    t_connect = time.time()
    keeping = [asyncio.create_task(one(i)) for i in range(args.viewers)]
    while any(v is None for v in viewers) and not all(k.done() for k in keeping):
        await asyncio.sleep(0.05)
    ok = [v for v in viewers if v is not None]
    _say(
        event="connected",
        viewers=len(ok),
        failed=len(errors),
        errors=errors[:5],
        seconds=round(time.time() - t_connect, 2),
        # By viewer index (None if it failed), to find which server process holds it.
        local_ports=[v._transport.get_extra_info("sockname")[1] if v else None for v in viewers],
    )
    # Watchers watch before the window starts: each has its document and live rows.
    # (A server that admits opens in turn upgrades a websocket at once and builds later.)
    deadline = time.time() + 300  # a thousand sessions built in turn take minutes
    while time.time() < deadline:
        ok = [v for v in viewers if v is not None]  # a refused viewer's next try, once it got in
        if all(v.rows.streamed for v in ok):
            break
        await asyncio.sleep(0.05)
    _say(event="watching", seconds=round(time.time() - t_connect, 2), refused=refusals)
    if args.prepared_from:
        _say(event="prepared", sessions=await _prepared_settled(args.prepared_from))
    await asyncio.sleep(args.settle)
    t0 = time.time()
    _say(event="window_start", t=t0)
    joining = asyncio.create_task(join(args)) if args.join else None
    await asyncio.sleep(args.duration)
    t1 = time.time()
    _say(event="window_end", t=t1)
    await asyncio.sleep(args.grace)
    if joining is not None:
        first_rows, failed, phases = await joining
        _say(event="joined", first_row_s=first_rows, failed=failed, phases=phases)
    dropped = sum(1 for v in ok if v.closed.done())
    for v in ok:
        v.close()
    meta = dict(
        t_connect=t_connect,
        t0=t0,
        t1=t1,
        viewers=args.viewers,
        connected=len(ok),
        failed=len(errors),
        errors=errors[:5],
        dropped=dropped,
        open_times=[v.open_time if v else None for v in viewers],
        messages=sum(v.rows.messages for v in ok),
        streamed=sum(v.rows.streamed for v in ok),
        bytes=sum(v.rows.bytes for v in ok),
        pulled=[v.rows.pulled for v in ok],
    )
    save(args.out, viewers, meta)
    await asyncio.sleep(0.2)  # let the close frames go out
    _say(event="done", dropped=dropped)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True)
    p.add_argument("--viewers", type=int, default=1)
    p.add_argument("--settle", type=float, default=3.0, help="seconds between connect and window")
    p.add_argument("--duration", type=float, default=20.0, help="measurement window, seconds")
    p.add_argument("--grace", type=float, default=3.0, help="seconds to wait for late rows")
    p.add_argument("--concurrency", type=int, default=6, help="viewers connecting at once")
    p.add_argument("--join", type=int, default=0, help="viewers that join during the window")
    p.add_argument("--join-spacing", type=float, default=0.02, help="seconds between joins")
    p.add_argument("--out", required=True)
    p.add_argument(
        "--prepared-from",
        default=None,
        help="/metrics URL: before the window, wait until its prepared sessions stop growing",
    )
    args = p.parse_args(argv)
    # The viewers stand for browsers on other machines: on a small shared machine they
    # should not queue behind the servers they measure (needs root; harmless without).
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, -10)
    try:
        asyncio.run(run(args))
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
