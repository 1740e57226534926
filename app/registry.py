"""This process's shared parts: one subscriber, its fan-out, its status board, history reads.

A Panel process serves many sessions; all of them read through these three, so each
frame is fetched, each tick's rows routed and each status line worked out once per
process. :func:`get` is the one way to reach them; :func:`reset` the one way to swap
them (tests). Keyed by pid: ``panel serve --num-procs`` forks after importing the app,
and what a child inherits belongs to its parent (a Dask client does not survive a fork).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from headrace.app.live.admission import Admission
from headrace.app.live.copied import Copier
from headrace.app.live.fanout import Fanout
from headrace.app.live.heap import Heap
from headrace.app.live.internals import gate_sessions
from headrace.app.live.prepared import MAX_AGE, Prepared
from headrace.app.live.subscriber import Subscriber
from headrace.app.pages.board import Board
from headrace.app.pages.opsboard import OpsBoard
from headrace.app.settings import (
    freeze_sessions,
    history_url,
    opens_waiting,
    prepared_sessions,
    window_seconds,
)
from headrace.app.telemetry import Telemetry
from headrace.app.views.history import HistoryCache


@dataclass(frozen=True)
class Registry:
    subscriber: Subscriber
    fanout: Fanout
    board: Board
    history: HistoryCache
    telemetry: Telemetry
    ops: OpsBoard
    admission: Admission
    prepared: Prepared
    heap: Heap
    copier: Copier

    @classmethod
    def around(cls, subscriber: Subscriber, history: HistoryCache | None = None) -> Registry:
        history = history or HistoryCache(history_url())
        fanout = Fanout(subscriber)
        admission = Admission(opens_waiting())
        fanout.observers.append(admission.flushed)
        heap = Heap(fanout.sessions, lambda: fanout.unregistered)
        telemetry = Telemetry(subscriber, fanout)
        if freeze_sessions():
            admission.observers.append(heap.built)
            fanout.observers.append(heap.flushed)
            telemetry.every_period.append(heap.tick)
        # Within half a stream's window, a prepared session's catch-up is an ordinary one.
        prepared = Prepared(admission, prepared_sessions(), min(MAX_AGE, window_seconds() / 2))
        copier = Copier()
        telemetry.sources += [admission.info, prepared.info, heap.info, copier.info]
        board, ops = Board(subscriber), OpsBoard(subscriber)
        return cls(
            subscriber, fanout, board, history, telemetry, ops, admission, prepared, heap, copier
        )

    def start(self) -> None:
        """Start the subscriber and the figures' timer on the running loop; from now on
        this process opens sessions in turn (:mod:`headrace.app.live.admission`), or
        prepared ahead (:mod:`headrace.app.live.prepared`)."""
        self.subscriber.start()
        self.telemetry.start()
        self.heap.watch()
        gate_sessions(_open)


async def _open(handler: Any, token: str, open_: Callable[[], Awaitable[None]]) -> None:
    current = _current  # none after reset() (tests): Bokeh's own open, as if never gated
    if current is None or current[0] != os.getpid():
        await open_()
    else:
        await current[1].prepared.open(handler, token, open_)


_current: tuple[int, Registry] | None = None
_lock = threading.Lock()


def get() -> Registry:
    """This process's registry, created on first use, with its subscriber started.

    Call it from the server's event loop (session creation, a setup script, a callback);
    from another thread it starts the subscriber on the loop Tornado calls current.
    """
    global _current
    with _lock:
        if _current is None or _current[0] != os.getpid():
            _current = (os.getpid(), Registry.around(Subscriber()))
        registry = _current[1]
    if not registry.subscriber.started:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            from tornado.ioloop import IOLoop

            IOLoop.current().add_callback(registry.start)
        else:
            registry.start()
    return registry


def reset(
    subscriber: Subscriber | None = None, history: HistoryCache | None = None
) -> Registry | None:
    """Make this process's parts those around ``subscriber`` (None: new ones on next use).

    Returns the new registry. The subscriber is started by :func:`get`, as usual.
    """
    global _current
    registry = Registry.around(subscriber, history) if subscriber is not None else None
    with _lock:
        if _current is not None:
            _current[1].prepared.stop()
            _current[1].heap.unwatch()
        _current = (os.getpid(), registry) if registry is not None else None
    return registry
