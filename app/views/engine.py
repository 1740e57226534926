"""A live view in one Panel process: its function called once per tick, its glyphs fed.

One :class:`Engine` per view per process, whatever the number of sessions showing it.
When every stream the view reads has rows, the engine calls the view's function on the
process's window and renders the result once (:func:`headrace.app.views.tree.render`).
It then tells what each glyph's data depends on by calling the function again with each
kind of input empty: a glyph drawn from appended rows is **streamed** (each tick's new
rows are appended), one drawn from a window (``rows(...).last(...)``) is **replaced**, a
glyph that does not change is left as rendered. Each fed glyph gets a channel in the
fan-out, which sends every session the same encoded message.

On every tick of a stream it reads (the subscriber's listener, on the server's loop),
the engine calls the function once with the new rows and hands each glyph's part to its
channel. Rows revised in place (a window that emits early) go through the function
too: a streamed glyph's points at their x are patched, in every session.

A failing function, a missing column or a wrong shape becomes the view's
error (logged once, shown on its plot in every session); other views go on, and the
view recovers on the next tick that works.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from headrace.app.live.channel import Channel, Replaced, length
from headrace.app.live.columns import Columns, take
from headrace.app.live.internals import scratch_document
from headrace.app.settings import follow_seconds
from headrace.app.views.calls import APPENDED, TAG, WINDOW, Calls, View
from headrace.app.views.tree import (
    UNORDERED,
    Glyph,
    Rendering,
    ViewError,
    elements,
    follow,
    lighter,
    refuse_summary,
    tag,
)
from headrace.app.views.tree import label as path_label
from headrace.app.views.tree import render as render_tree

if TYPE_CHECKING:
    import pandas as pd

    from headrace.app.live.fanout import Fanout

log = logging.getLogger(__name__)

RETRY_SECONDS = 5.0  # a view that failed to render tries again at most this often

APPEND, REPLACE, REDRAW = "append", "replace", "redraw"  # how a glyph is fed


class Watcher(Protocol):
    @property
    def active(self) -> bool:
        """Whether a viewer is (or is about to be) looking at this view."""

    def changed(self) -> None:
        """The engine's rendering or error changed (called on the loop, under the lock)."""


class Engine:
    """One view in this process: rendered once, computed once per tick, fed to every session."""

    def __init__(self, view: View, fanout: Fanout) -> None:
        self.view = view
        self.name = view.name
        self.fanout = fanout
        self.subscriber = fanout.subscriber
        self.lock = self.subscriber.lock
        self.rendering: Rendering | None = None
        self.kinds: dict[tuple, str] = {}
        self.channels: dict[tuple, Channel | Replaced] = {}
        self.version = 0
        self.error: str | None = None
        self.calls = Calls(view, self.subscriber)  # the view's function, for this process
        self._last_x: dict[tuple, float] = {}
        self._tried = 0.0
        self._logged: set[str] = set()
        self._watchers: weakref.WeakSet[Any] = weakref.WeakSet()
        self.idle = False  # no session watched: ticks skipped, drawn again on the next watch
        with self.lock:
            self.subscriber.add_listener(self._on_rows)
            self.subscriber.add_reviser(self._on_revised)
            self._prepare()

    # -- what sessions use ------------------------------------------------------------------

    def watch(self, watcher: Watcher) -> None:
        """Tell ``watcher`` (a session's view) of new renderings and errors from now on.

        A view nobody in this process watched for a while is drawn again first, from
        the window: it skipped its ticks meanwhile.
        """
        with self.lock:
            self._watchers.add(watcher)
            if self.idle:
                self.idle = False
                self._prepare()

    def unwatch(self, watcher: Watcher) -> None:
        with self.lock:
            self._watchers.discard(watcher)

    def feed(self, path: tuple) -> str:
        """The fan-out's name for the glyph at ``path`` of the current rendering."""
        return f"{self.name}@{self.version}:{path_label(path)}"

    @property
    def waiting_for(self) -> list[str]:
        """The view's streams without rows in this process yet."""
        return [s for s in self.view.streams if self.subscriber.snapshot(s).end == 0]

    # -- the function's inputs --------------------------------------------------------------

    # -- rendering once ---------------------------------------------------------------------

    def _prepare(self) -> None:
        """Render the view for this process (once every stream it reads has rows)."""
        self._tried = time.monotonic()
        if self.waiting_for:
            return
        try:
            rendering, kinds, data = self._render()
        except Exception as exc:
            self._fail(exc)
            return
        self.version += 1
        self.rendering, self.kinds, self.channels, self._last_x = rendering, kinds, {}, {}
        capacity = max(
            [self.subscriber.snapshot(r.stream).capacity for r in self.view.inputs.values()]
        )
        for path, kind in kinds.items():
            glyph = rendering.glyphs[path]
            columns = data[path]
            if kind == APPEND:
                channel: Channel | Replaced = Channel(
                    self.feed(path), columns, length(columns), capacity
                )
                self._last_x[path] = last(columns, glyph.x)
            else:
                channel = Replaced(self.feed(path), columns)
            self.channels[path] = channel
            self.fanout.add_feed(channel)
            # The process's copy carries no rows: each session's copy gets them on register.
            glyph.source.data = {c: a[:0] for c, a in columns.items()}
        log.info(
            "view %s: rendered (version %d): %d streamed, %d replaced, %d static glyphs",
            self.name,
            self.version,
            sum(k == APPEND for k in kinds.values()),
            sum(k != APPEND for k in kinds.values()),
            len(rendering.glyphs) - len(kinds),
        )
        self._recovered()
        self._notify()

    def _render(self) -> tuple[Rendering, dict[tuple, str], dict[tuple, Columns]]:
        whole = self.calls(self.calls.inputs(whole=True), styled=True)
        with scratch_document():  # a document of its own: none of a session's change events
            rendering = render_tree(whole, self.name)
            follow(rendering.root, self.view.follow or follow_seconds())
            lighter(rendering.root)
            tag(rendering.root, self.name, self.view.streams)
        shown = {e.path: e.element for e in elements(whole, self.name)}
        probes = {APPENDED: self._probe(APPENDED), WINDOW: self._probe(WINDOW)}
        kinds, data = {}, {}
        kind_of = self.calls.kinds
        for path, glyph in rendering.glyphs.items():
            columns = data[path] = glyph.data(shown[path])
            drawn_from = getattr(getattr(shown[path], "data", None), "attrs", {}).get(TAG)
            if not length(columns) and drawn_from in kind_of:
                # Nothing to compare (no spikes yet): the frame it was drawn from says.
                reads = {kind: kind == kind_of[drawn_from] for kind in probes}
            else:
                reads = {
                    kind: probe is not None and depends(glyph, columns, probe.get(path))
                    for kind, probe in probes.items()
                }
            if reads[APPENDED] and reads[WINDOW]:
                raise ViewError(
                    f"view {self.name}: {glyph.kind} at {path_label(path)} draws from appended "
                    "rows and from a window at once; draw each in an element of its own"
                )
            if reads[APPENDED]:
                appended = [g.stream for g in self.view.inputs.values() if g.span is None]
                refuse_summary(self.name, glyph.kind, appended)
                kinds[path] = APPEND if glyph.streamed else REDRAW
            elif reads[WINDOW]:
                kinds[path] = REPLACE
        return rendering, kinds, data

    def _probe(self, skip: str) -> dict[tuple, Any] | None:
        """The function's elements with inputs of one kind empty (None: it has none)."""
        if skip not in self.calls.kinds.values():
            return None
        result = self.calls(self.calls.inputs(whole=True, skip=skip))
        return {e.path: e.element for e in elements(result, self.name)}

    # -- every tick -------------------------------------------------------------------------

    def _on_rows(self, stream: str, rows: Columns, first: int) -> None:
        self._on_change(stream, rows)

    def _on_revised(self, stream: str, indices: np.ndarray, rows: Columns) -> None:
        # Held rows replaced (a window that emits early): streamed glyphs patch the points
        # at their x, replaced ones are computed again from the revised window.
        self._on_change(stream, rows, revised=True)

    def _on_change(self, stream: str, rows: Columns, revised: bool = False) -> None:
        if stream not in self.view.streams:
            return
        if self.rendering is not None and not any(w.active for w in list(self._watchers)):
            self.idle = True  # nobody shows it in this process: no work per tick
            return
        if self.rendering is None:
            if time.monotonic() - self._tried >= RETRY_SECONDS or self.error is None:
                self._prepare()
            return
        try:
            self._tick(stream, rows, revised)
        except Exception as exc:
            self._fail(exc)
            return
        self._recovered()
        self.fanout.wake_soon()

    def _tick(self, stream: str, rows: Columns, revised: bool = False) -> None:
        assert self.rendering is not None
        result = self.calls(self.calls.inputs((stream, rows)))
        redrawn: dict[tuple, Any] | None = None
        for found in elements(result, self.name):
            path = found.path
            glyph = self.rendering.glyphs.get(path)
            if glyph is None:
                if found.key is not None:  # a key not seen before: one more line to draw
                    log.info("view %s: new key %r, rendering again", self.name, found.key)
                    self._prepare()
                    return
                continue
            kind = self.kinds.get(path)
            if kind == APPEND and revised:
                self._patch(path, glyph, glyph.data(found.element))
            elif kind == APPEND:
                self._append(path, glyph, glyph.data(found.element))
            elif kind == REPLACE:
                self._replace(path, glyph.data(found.element))
            elif kind == REDRAW:
                if redrawn is None:
                    whole = self.calls(self.calls.inputs(whole=True))
                    redrawn = {e.path: e.element for e in elements(whole, self.name)}
                if path in redrawn:
                    self._replace(path, glyph.data(redrawn[path]))

    def _append(self, path: tuple, glyph: Glyph, columns: Columns) -> None:
        self._check_shape(glyph, columns)
        newest = self._last_x.get(path, -np.inf)
        x = columns[glyph.x]
        if self.calls.lookback and len(x) and x.dtype.kind == "f":
            # Rows a lookback gave again (only then: equal times can be real rows).
            start = int(np.searchsorted(x, newest, side="right"))
            columns = take(columns, start) if start else columns
        n = length(columns)
        if n == 0:
            return
        self._last_x[path] = max(newest, last(columns, glyph.x))
        channel = self.channels[path]
        assert isinstance(channel, Channel)
        channel.add(columns, channel.pending_end)

    def _patch(self, path: tuple, glyph: Glyph, columns: Columns) -> None:
        """Replace the glyph's points at the x of ``columns``' rows; markers it lacks
        are added (a line's cannot be: it is drawn in x order)."""
        self._check_shape(glyph, columns)
        channel = self.channels[path]
        assert isinstance(channel, Channel)
        indices, found = channel.locate(glyph.x, columns[glyph.x])
        if len(indices):
            channel.patch(indices, {name: array[found] for name, array in columns.items()})
        if glyph.kind in UNORDERED and not found.all():
            channel.add(
                {name: array[~found] for name, array in columns.items()}, channel.pending_end
            )

    def _replace(self, path: tuple, columns: Columns) -> None:
        channel = self.channels[path]
        assert isinstance(channel, Replaced)
        channel.replace(columns)

    def _check_shape(self, glyph: Glyph, columns: Columns) -> None:
        sizes = {len(a) for a in columns.values()}
        if len(sizes) > 1:
            raise ViewError(
                f"view {self.name}: {glyph.kind} at {path_label(glyph.path)} got columns "
                f"of different lengths {sorted(sizes)}"
            )

    # -- errors -----------------------------------------------------------------------------

    def report(self, exc: Exception, what: str = "") -> str:
        """Log ``exc`` once per distinct message; return the message."""
        message = str(exc) if isinstance(exc, ViewError) else f"view {self.name}: {exc!r}"
        if what:
            message = f"{message} ({what})"
        if message not in self._logged:
            self._logged.add(message)
            log.warning("%s", message, exc_info=not isinstance(exc, ViewError))
        return message

    def _fail(self, exc: Exception) -> None:
        message = self.report(exc)
        if message != self.error:
            self.error = message
            self._notify()

    def _recovered(self) -> None:
        if self.error is not None:
            log.info("view %s: drawing again", self.name)
            self.error = None
            self._notify()

    def _notify(self) -> None:
        for watcher in list(self._watchers):
            try:
                watcher.changed()
            except Exception:
                log.exception("view %s: a session could not be told of a change", self.name)


def last(columns: Columns, x: str) -> float:
    values = columns.get(x)
    if values is None or not len(values) or values.dtype.kind != "f":
        return -np.inf
    return float(np.nanmax(values))


def depends(glyph: Glyph, columns: Columns, probe: Any) -> bool:
    """Whether the glyph's data changed when inputs of one kind were given empty."""
    if probe is None:
        return True  # the element went away with those inputs
    other = glyph.data(probe)
    return any(
        len(a) != len(other[c]) or not np.array_equal(a, other[c], equal_nan=a.dtype.kind == "f")
        for c, a in columns.items()
    )


_engines: weakref.WeakKeyDictionary[Fanout, dict[tuple, Engine]] = weakref.WeakKeyDictionary()
_engines_lock = threading.Lock()


def engine(view: View, fanout: Fanout) -> Engine:
    """The process's engine of ``view`` (made on first use)."""
    with _engines_lock:
        engines = _engines.setdefault(fanout, {})
        found = engines.get(view.key)
        if found is None:
            found = engines[view.key] = Engine(view, fanout)
        return found


def engines(fanout: Fanout) -> list[Engine]:
    with _engines_lock:
        return list(_engines.get(fanout, {}).values())


def trial(view: View, frames: dict[str, pd.DataFrame]) -> Engine:
    """``view`` rendered on ``frames`` (by stream) as a Panel process would, without a cluster.

    Raises the view's :class:`ViewError`; the engine's ``kinds`` say how each glyph is fed.
    """
    from headrace.app.live.fanout import Fanout
    from headrace.app.live.subscriber import Subscriber

    subscriber = Subscriber("tcp://127.0.0.1:1", window=3600)  # never connects
    for stream, frame in frames.items():
        subscriber.ingest(stream, 1, frame)
    tried = Engine(view, Fanout(subscriber))
    if tried.waiting_for:
        raise ViewError(f"view {view.name}: no rows given for {', '.join(tried.waiting_for)}")
    if tried.error is not None:
        raise ViewError(tried.error)
    return tried
