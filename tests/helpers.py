"""Helpers for the tests: free ports, waiting, a synthetic publisher, the real processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from distributed import Client
from ports import free_port

from headrace.etl import contract

ROOT = Path(__file__).resolve().parent.parent
STEP = pd.Timedelta(milliseconds=25)


def wait_for(
    predicate: Callable[[], object],
    timeout: float,
    what: str | Callable[[], str],
    step: float = 0.05,
):
    """Wait until ``predicate()`` is true; ``what`` (or what it returns) names it on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            what = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(step)


async def async_wait_for(predicate: Callable[[], object], timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)
    return value


def topic_subscribers(scheduler, topic: str) -> set[str]:
    """The ids of the clients whose subscription to ``topic`` has reached ``scheduler``
    (an in-process one, e.g. ``LocalCluster(processes=False).scheduler``)."""
    found = scheduler._broker._topics.get(topic)  # a defaultdict: .get adds no topic
    return set(found.subscribers) if found is not None else set()


class Publisher:
    """Publishes 25 ms rows up to now as consecutive frames of one stream, like the tick loop.

    Keeps every frame it published (``frames[seq]``) so tests can compare what readers got.
    """

    def __init__(self, stream: str = "synth", interval: float = 0.15, ring: int = 64) -> None:
        self.stream = stream
        self.interval = interval
        self.ring = ring
        self.seq = 0
        self.frames: dict[int, pd.DataFrame] = {}
        self.next_time = pd.Timestamp.now(tz="UTC").floor("25ms") - 40 * STEP
        self.rng = np.random.default_rng(1)
        self.errors: list[BaseException] = []
        self.unsent: pd.DataFrame | None = None

    def make_frame(self) -> pd.DataFrame:
        now = pd.Timestamp.now(tz="UTC")
        n = max(1, int((now - self.next_time) / STEP))
        times = pd.date_range(self.next_time, periods=n, freq=STEP, unit="ns")
        self.next_time = times[-1] + STEP
        values = self.rng.standard_normal(n)
        return pd.DataFrame({"time": times, "value": values, "count": np.ones(n, dtype="int64")})

    async def publish(self, client: Client, frame: pd.DataFrame | None = None, seq=None) -> int:
        """Publish ``frame`` (a new one by default) as ``seq`` (the next by default).

        A failed publish is retried with the same seq and rows, as the tick loop does.
        """
        if seq is None:
            seq = self.seq + 1
            if self.unsent is None:
                self.unsent = self.make_frame()
            frame = self.unsent
        assert frame is not None
        # As a Future (rows left in worker memory), the contract's way for large frames.
        [future] = await client.scatter([frame], hash=False)
        frames = contract.FrameStream(self.stream, client, ring=self.ring, interval=self.interval)
        await frames.publish(seq, future, contract.Span.of(frame))
        self.frames[seq] = frame
        if seq > self.seq:
            self.seq, self.unsent = seq, None
        return seq

    async def run(self, address: str, stop: threading.Event | asyncio.Event) -> None:
        """Publish every ``interval`` until ``stop``; survives a scheduler restart."""
        while not stop.is_set():
            try:
                async with Client(address, asynchronous=True, timeout=5) as client:
                    while not stop.is_set():
                        await asyncio.wait_for(self.publish(client), 5)
                        await asyncio.sleep(self.interval)
            except Exception as exc:  # scheduler restarting: reconnect, keep the seq
                self.errors.append(exc)
                await asyncio.sleep(0.2)

    def rows(self, seqs=None) -> pd.DataFrame:
        seqs = sorted(self.frames) if seqs is None else seqs
        return pd.concat([self.frames[s] for s in seqs], ignore_index=True)

    def time_ms(self) -> np.ndarray:
        """Every published row time as float ms since the epoch, as Bokeh sends it."""
        from bokeh.util.serialization import convert_datetime_array

        times = self.rows()["time"].dt.tz_localize(None).to_numpy("datetime64[ns]")
        return convert_datetime_array(times)


@contextlib.contextmanager
def publishing(publisher: Publisher, address: str) -> Iterator[Publisher]:
    """Run ``publisher`` in a thread with its own event loop."""
    stop = threading.Event()
    thread = threading.Thread(
        target=lambda: asyncio.run(publisher.run(address, stop)), name="publisher", daemon=True
    )
    thread.start()
    try:
        yield publisher
    finally:
        stop.set()
        thread.join(10)


def count_dataset_gets(scheduler) -> Counter:
    """Count, per dataset name, how often clients fetch it (the scheduler's publish_get)."""
    counts: Counter = Counter()
    original = scheduler.handlers["publish_get"]

    def publish_get(names):
        counts.update(names)
        return original(names=names)

    scheduler.handlers["publish_get"] = publish_get
    return counts


@contextlib.contextmanager
def headrace_serve(
    address: str,
    num_procs: int,
    log_path: Path,
    extra=(),
    window: float | None = None,
    history: str | None = None,
    access=None,
    port: int | None = None,
    apps: tuple[Path, ...] = (),
) -> Iterator[tuple[subprocess.Popen, int]]:
    """``headrace serve`` as a subprocess on ``port`` (default: a free one); kills its
    process group after.

    ``access``: a :class:`~headrace.cluster.security.access.Access` (logins, origins; its
    port is this one); ``apps``: Panel apps served instead of the dashboard.
    """
    import dataclasses

    from headrace.cluster import processes
    from headrace.cluster.panel import serve_command

    port = port or free_port()
    if access is not None:
        access = dataclasses.replace(access, port=port)
    with open(log_path, "ab") as log:
        proc = serve_command(
            num_procs,
            address,
            port,
            extra=["--log-level", "info", *extra],
            window=window,
            wait=False,
            history=history,
            access=access,
            apps=apps,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            yield proc, port
        finally:
            processes.stop(proc)


def mypy(files: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    """mypy on ``files`` (names in ``cwd``), finding headrace in this checkout (links and all)."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--ignore-missing-imports",
            "--follow-imports=silent",
            f"--cache-dir={cwd / 'cache'}",
            *files,
        ],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "MYPYPATH": str(ROOT)},
        timeout=timeout,
    )


def spawn(args: list[str], log, env: dict | None = None) -> subprocess.Popen:
    """A subprocess in its own process group (stop it with ``headrace.cluster.processes.stop``)."""
    from headrace.cluster import processes

    return processes.start(
        args, {**os.environ, **(env or {})}, stdout=log, stderr=subprocess.STDOUT
    )


def headrace_etl(
    config: Path, address: str, log, env: dict | None = None, metrics_port: int = 0
) -> subprocess.Popen:
    """``headrace etl --config CONFIG --scheduler ADDRESS`` (metrics off unless a port is given)."""
    cmd = [sys.executable, "-m", "headrace.cluster.cli", "etl", "--config", str(config)]
    cmd += ["--scheduler", address, "--metrics-port", str(metrics_port)]
    return spawn(cmd, log, env)


def kill_groups(*procs: subprocess.Popen | None) -> None:
    """SIGKILL the process group of each of ``procs`` still running (a test's leftovers)."""
    for proc in procs:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def dask_scheduler(port: int, log) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port", str(port)]
    return spawn([*cmd, "--dashboard-address", ":0"], log)


def dask_worker(address: str, log) -> subprocess.Popen:
    """A `dask worker` (with its nanny) under ``headrace worker``, as the README runs it."""
    cmd = [sys.executable, "-m", "headrace.cluster.cli", "worker", address, "--host", "127.0.0.1"]
    return spawn([*cmd, "--nthreads", "2", "--no-dashboard"], log)


async def run_loop(address, streams, state_dir, until, timeout=30.0):
    """Tick ``streams`` until ``until(runners)`` holds; return runners and all published frames."""
    from headrace.etl.loop.ticks import run_streams
    from headrace.etl.store.state import StateStore

    store = StateStore(state_dir)
    async with Client(address, asynchronous=True) as client:
        stop, runners = asyncio.Event(), []
        task = asyncio.create_task(run_streams(client, streams, store, 100_000, stop, runners))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not (runners and until(runners)):
            if task.done():
                task.result()
            await asyncio.sleep(0.05)
        stop.set()
        await task
        frames = {s.name: await contract.FrameStream(s.name, client).read() for s in streams}
    store.close()
    return {r.stream.name: r for r in runners}, frames


def published_seq(client: Client, stream: str) -> int:
    """The sequence number of ``stream``'s newest published frame (0: none yet)."""
    head = contract.FrameStream(stream, client).head()
    return head.seq if head else 0


async def tail(
    address: str,
    streams: list,
    path: Path,
    pieces: list[bytes],
    state_dir: Path,
    linger: float = 0.0,
):
    """Run the tick loop; append the next piece once every stream has read the file so far.

    ``linger``: seconds the loop goes on ticking after the last piece was read.
    """
    from headrace.etl.loop.ticks import run_streams
    from headrace.etl.store.deadletter import DeadLetterStore
    from headrace.etl.store.state import StateStore

    store, dead = StateStore(state_dir), DeadLetterStore(state_dir)
    async with Client(address, asynchronous=True) as client:
        stop, runners = asyncio.Event(), []
        loop = run_streams(client, streams, store, 100_000, stop, runners, dead=dead)
        task = asyncio.create_task(loop)
        deadline, left = time.monotonic() + 90, list(pieces)
        while time.monotonic() < deadline:
            if task.done():
                task.result()
            size = path.stat().st_size
            if len(runners) == len(streams) and all(r.state.cursor.offset == size for r in runners):
                if not left:
                    await asyncio.sleep(linger)
                    break
                with open(path, "ab") as f:
                    f.write(left.pop(0))
            await asyncio.sleep(0.02)
        stop.set()
        await task
        frames = {s.name: await contract.FrameStream(s.name, client).read() for s in streams}
    letters = {s.name: dead.recent(s.name, limit=10_000) for s in streams}
    store.close()
    dead.close()
    assert not left, f"{len(left)} pieces never written: the loop did not keep up"
    return {r.stream.name: r for r in runners}, frames, letters


def serve_threaded(apps: dict) -> tuple[object, int]:
    """``pn.serve(apps)`` on a free port in a thread of its own, once it answers; returns
    the server (``.stop()`` it) and the port."""
    import panel as pn

    port = free_port()
    server = pn.serve(apps, port=port, address="127.0.0.1", show=False, threaded=True)
    wait_http(port, "/static/js/bokeh.min.js", 30)
    return server, port


def wait_http(port: int, path: str = "/dashboard", timeout: float = 60, proc=None) -> None:
    import urllib.error
    import urllib.request

    def up() -> bool:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"panel serve exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                return r.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    wait_for(up, timeout, f"panel serve on :{port}", step=0.25)


def bokeh_client_without_recursion() -> None:
    """Make ``bokeh.client`` handle each message in a loop instead of one call deeper.

    Bokeh's client (3.9) handles a message and then awaits ``_next()`` from inside that
    handler, so every message adds three frames to the coroutine chain. After ~330
    messages (a minute of a live dashboard) a ``RecursionError`` ends its message loop:
    the session stays connected and silently applies nothing more. Browsers are not
    affected; this is only the Python client tests use as a viewer. Nested calls here
    only ask the outermost one to go round again.
    """
    from bokeh.client.connection import ClientConnection

    original = ClientConnection._next
    if getattr(original, "trampolined", False):
        return

    async def _next(self) -> None:
        if getattr(self, "_in_next", False):
            self._next_again = True
            return
        self._in_next = True
        try:
            self._next_again = True
            while self._next_again:
                self._next_again = False
                await original(self)
        finally:
            self._in_next = False

    _next.trampolined = True
    ClientConnection._next = _next


class RecordedSession(threading.Thread):
    """A Bokeh client session of the dashboard in its own thread, recording the rows it gets.

    Behaves like a browser as far as the server can tell: pulls the document, then reports
    it ready (Panel and the fan-out hold updates until then). ``rows()`` is what the
    stream's source held when pulled followed by every streamed batch, as float ms.
    """

    def __init__(self, url: str, stream: str) -> None:
        super().__init__(name=f"session-{stream}", daemon=True)
        self.url, self.stream = url, stream
        self.pulled = threading.Event()
        self.initial: np.ndarray | None = None
        self.batches: list[np.ndarray] = []
        self.texts: list[tuple[float, str]] = []  # (arrival, new text) of markup models
        self.arrivals: list[tuple[float, int]] = []  # (arrival, rows) of each batch
        self.pid: int | None = None
        self.error: BaseException | None = None
        self.session = None

    def run(self) -> None:
        import panel.models  # noqa: F401  (the client must know Panel's model types)
        from bokeh.client import pull_session
        from bokeh.document.events import ColumnsStreamedEvent, ModelChangedEvent
        from bokeh.events import DocumentReady
        from tornado.ioloop import IOLoop

        bokeh_client_without_recursion()
        try:
            self.loop = IOLoop()
            self.session = pull_session(url=self.url, io_loop=self.loop)
            doc = self.session.document
            # The dashboard tags its main column with its Panel process's pid.
            [pid] = [t for m in doc.models for t in m.tags if str(t).startswith("pid:")]
            self.pid = int(pid[4:])
            source = stream_source(doc, self.stream)
            if source is not None:
                self.initial = np.asarray(source.data["time"], dtype=float).copy()

            def on_change(event) -> None:
                if isinstance(event, ColumnsStreamedEvent) and event.model is source:
                    self.batches.append(np.asarray(event.data["time"], dtype=float))
                    self.arrivals.append((time.time(), len(self.batches[-1])))
                elif isinstance(event, ModelChangedEvent) and event.attr == "text":
                    self.texts.append((time.time(), str(event.new)))

            doc.on_change(on_change)
            doc.callbacks.send_event(DocumentReady())
        except BaseException as exc:
            self.error = exc
            return
        finally:
            self.pulled.set()
        self.session._loop_until_closed()

    def stop(self) -> None:
        if self.session is not None:
            self.loop.add_callback(self.session.close)
        self.join(10)

    def rows(self) -> np.ndarray:
        return np.concatenate([self.initial, *self.batches])


def has_rows(url: str, stream: str) -> bool:
    """Whether a new session of the dashboard at ``url`` opens with rows of ``stream``."""
    session = RecordedSession(url, stream)
    session.start()
    ok = session.pulled.wait(30) and session.initial is not None and len(session.initial) > 0
    session.stop()
    return bool(ok)


def stream_source(doc, stream: str):
    """The ColumnDataSource of ``stream``'s plot in a dashboard document, or None."""
    from bokeh.models import ColumnDataSource, GlyphRenderer, Plot

    for plot in doc.select({"type": Plot}):
        if f"headrace.stream:{stream}" in plot.tags:
            live = [r for r in plot.select({"type": GlyphRenderer}) if r.name != "history"]
            return live[0].data_source
    return next(iter(s for s in doc.select({"type": ColumnDataSource}) if "value" in s.data), None)


async def raw_session(url: str) -> None:
    """Open a session over the bare websocket protocol, wait until it is built, close it.

    What a browser tab that is closed at once costs the server, without the Python
    client's deserialisation of the whole document (four times the server's work).
    """
    from bokeh.util.token import generate_jwt_token, generate_session_id
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    ws_url = url.replace("http://", "ws://").rstrip("/") + "/ws"
    token = generate_jwt_token(generate_session_id())
    conn = await websocket_connect(HTTPRequest(ws_url), subprotocols=["bokeh", token])
    try:
        # The server sends ACK once the session's document is built.
        header = await asyncio.wait_for(conn.read_message(), 30)
        assert header is not None and '"ACK"' in header, header
    finally:
        conn.close()


def fed_in_ticks(join, sides: list[pd.DataFrame], start: pd.Timestamp, tick_ms: int):
    """Feed ``join`` both ``sides`` a tick of ``tick_ms`` of event time at a time, its carry
    pickled between ticks as the checkpoint keeps it: ``(frames published, last carry)``."""
    import pickle

    end = max(s["time"].max() for s in sides)
    out, carry, lo = [], None, start
    while lo <= end:
        hi = lo + pd.Timedelta(tick_ms, "ms")
        cut = [s[(s["time"] >= lo) & (s["time"] < hi)] for s in sides]
        step = join.step(pd.concat(cut, ignore_index=True), carry)
        carry = pickle.loads(pickle.dumps(step.carry))
        out.append(step.frame)
        lo = hi
    return pd.concat(out, ignore_index=True), carry


def drag_back(page) -> tuple[float, float]:
    """Drag the page's first plot 200 px to the right (back in time); where it was grabbed."""
    box = page.locator(".bk-Canvas").first.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 200, y, steps=8)
    page.mouse.up()
    return x, y


def interval_pairs(
    left: pd.DataFrame, right: pd.DataFrame, within: str, by: list[str], right_name: str = "mem"
) -> pd.DataFrame:
    """Every pair of a left and a right row at most ``within`` apart (of the same ``by``),
    by brute force: what an IntervalJoin publishes, in its columns, sorted by time."""
    value, at = f"value_{right_name}", f"time_{right_name}"
    left, right = left[["time", "value", *by]], right[["time", "value", *by]]
    how = "inner" if by else "cross"
    both = left.merge(right, on=by or None, how=how, suffixes=("", "_r"))
    near = (both["time"] - both["time_r"]).abs() <= pd.Timedelta(within)
    out = both[near].rename(columns={"value_r": value, "time_r": at})
    return out.sort_values(["time", at, *by], ignore_index=True)[["time", "value", value, at, *by]]


def check_rows(rows: np.ndarray, published: np.ndarray, what: str) -> None:
    """``rows`` must be a run of consecutive published rows: in order, none twice, no gap."""
    assert len(rows), f"{what}: no rows"
    assert np.all(np.diff(rows) > 0), f"{what}: rows out of order or repeated"
    start = int(np.searchsorted(published, rows[0]))
    np.testing.assert_array_equal(rows, published[start : start + len(rows)], err_msg=what)


CHROMIUM = Path("/usr/bin/chromium")
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="/usr/bin/chromium is absent (./run test installs it as root)"
)
# Text of the document's markup models (the page renders them inside shadow roots).
TEXTS = """
() => !(window.Bokeh && Bokeh.documents && Bokeh.documents[0]) ? "" :
  [...Bokeh.documents[0].all_models]
  .filter((m) => typeof m.text === "string").map((m) => m.text).join("\\n")
"""


def shown(page, stream: str) -> tuple[int | None, float]:
    """The Panel process behind a Chromium page and the newest row (ms) of ``stream``'s
    plot, 0 without rows; ``(None, 0.0)`` while the page loads again (a reload)."""
    from playwright.sync_api import Error

    try:
        state = page.evaluate(PLOT_STATE, stream)
        pid = page.evaluate(PAGE_PID)
    except Error:  # the page navigated away under the call
        return None, 0.0
    return pid, (float(state["last"]) if state and state["rows"] else 0.0)


def chromium(playwright):
    """Debian's headless Chromium through Playwright (its own download cannot be reached)."""
    return playwright.chromium.launch(
        executable_path=str(CHROMIUM),
        args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
    )


# The stream's source in BokehJS: its row count, and the x-range it is shown in.
# The pid of the Panel process behind the page (the dashboard tags its main column).
PAGE_PID = """
() => {
  const doc = window.Bokeh && Bokeh.documents && Bokeh.documents[0];
  if (!doc) return null;
  for (const m of doc.all_models) {
    for (const t of (m.tags || [])) {
      if (typeof t === "string" && t.startsWith("pid:")) return Number(t.slice(4));
    }
  }
  return null;
}
"""
PLOT_STATE = """
(stream) => {
  const doc = window.Bokeh && Bokeh.documents && Bokeh.documents[0];
  if (!doc) return null;
  for (const m of doc.all_models) {
    if (m.constructor.__name__ === "Plot" || m.constructor.__name__ === "Figure") {
      if ((m.tags || []).includes("headrace.stream:" + stream)) {
        const source = m.renderers.find((r) => r.name !== "history").data_source;
        const times = source.data["time"];
        return {rows: source.get_length(), last: times[times.length - 1],
                start: m.x_range.start, end: m.x_range.end};
      }
    }
  }
  return null;
}
"""
