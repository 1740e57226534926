"""Live views as users declare them: a function of a stream's rows that returns HoloViews.

::

    import holoviews as hv
    from headrace import live

    def pump(rows):
        spikes = rows[rows["value"] > 5]
        return hv.Curve(rows, "time", "value") * hv.Scatter(spikes, "time", "value") * hv.HLine(5)

    view = live.view(pump, rows="pump")   # a Panel component: pn.Column(view)

The function is called with :class:`pandas.DataFrame` arguments, once per Panel process
per tick, never per session (:mod:`headrace.app.views.engine`): with the rows that just
arrived for an input of :func:`rows`, with the newest ``seconds`` of rows for an input of
``rows(...).last(seconds)``. What it returns is rendered once per process and each
session gets a copy whose glyph sources the fan-out feeds (:mod:`headrace.app.views.tree`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    import panel as pn

    from headrace.app.views.component import LiveView

Seconds = float | str | pd.Timedelta


def seconds(value: Seconds | None) -> float | None:
    """``value`` in seconds: a number, or anything :class:`pandas.Timedelta` reads ("60s")."""
    if value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    return pd.Timedelta(value).total_seconds()


@dataclass(frozen=True)
class Rows:
    """One input of a view: a stream's rows as they arrive, or its newest rows, whole.

    - ``rows("pump")``: the view function gets each tick's new rows, and what it draws
      from them is appended to the plot (streamed, as ``cds.stream`` would).
    - ``rows("pump", lookback="1s")``: the new rows with 1 s of earlier rows before
      them, for functions that look back (a rolling mean); only what is newer than what
      the plot has is appended.
    - ``rows("pump").last("60s")``: the newest 60 s of rows each tick; what the view
      draws from them replaces what it drew before (a histogram, a table of the latest
      value per key).
    """

    stream: str
    lookback: float = 0.0
    span: float | None = None  # None: appended rows; seconds: the window, replaced

    def last(self, span: Seconds) -> Rows:
        """The newest ``span`` of rows each tick (at most the live window of the process)."""
        value = seconds(span)
        if value is None or value <= 0:
            raise ValueError(f"rows({self.stream!r}).last({span!r}): give a positive duration")
        return replace(self, span=value, lookback=0.0)

    @property
    def appended(self) -> bool:
        return self.span is None

    def describe(self) -> str:
        if self.span is not None:
            return f"rows({self.stream!r}).last({self.span:g}s)"
        if self.lookback:
            return f"rows({self.stream!r}, lookback={self.lookback:g}s)"
        return f"rows({self.stream!r})"


def rows(stream: str, lookback: Seconds | None = None) -> Rows:
    """A stream's rows as a view's input (see :class:`Rows`)."""
    if not isinstance(stream, str) or not stream:
        raise TypeError(f"rows(): a stream's name is a non-empty str, not {stream!r}")
    return Rows(stream, seconds(lookback) or 0.0)


ViewFunction = Callable[..., Any]


class View:
    """A live view: ``function(**inputs)`` drawn live; place it in any Panel layout.

    Views with the same ``name`` share one rendering and one computation per process.
    The name defaults to the function's place in its file, the same in every session
    of an app whose script Panel runs once per session.
    """

    def __init__(
        self,
        function: ViewFunction,
        inputs: dict[str, Rows],
        name: str | None = None,
        follow: Seconds | None = None,
        history: bool = True,
        title: str | None = None,
    ) -> None:
        if not callable(function):
            raise TypeError(f"live.view(): {function!r} is not a function")
        if not inputs:
            raise TypeError(f"live.view({_qualname(function)}): give it a stream, e.g. rows='pump'")
        self.function = function
        self.inputs = inputs
        self.name = name or _place(function)
        self.follow = seconds(follow)
        self.history = history
        self.title = title
        refuse_early(self)

    @property
    def streams(self) -> list[str]:
        return sorted({r.stream for r in self.inputs.values()})

    @property
    def key(self) -> tuple:
        """What makes two declarations the same view in a process."""
        return (self.name, tuple(sorted(self.inputs.items())), self.follow)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={r.describe()}" for k, r in self.inputs.items())
        return f"live.view({self.name}, {args})"

    def __panel__(self) -> pn.viewable.Viewable:
        """This view in the current session (called by Panel when it is laid out)."""
        return self.session().panel

    def session(self) -> LiveView:
        """This view in the current session, for a page that also drives it from widgets.

        Its ``set_follow(seconds)``, ``look_back((start, end))`` and ``models(kind)`` act on
        this viewer's copy only; place it in a layout like any Panel component.
        """
        from headrace.app.views.component import LiveView

        return LiveView(self)

    def check(self, **frames: pd.DataFrame) -> dict[str, str]:
        """Draw this view from sample rows as a Panel process would, without a cluster.

        ``frames`` are rows by stream name (``time``, ``value``...). Returns how each
        glyph is fed, by its place in the plot: ``"append"`` (each tick's part
        streamed), ``"replace"`` (drawn again from a window) or ``"redraw"`` (drawn
        again from all rows: a glyph that outlines them all, such as an Area's).
        Raises :class:`~headrace.app.views.tree.ViewError` with what the plot would show.
        """
        from headrace.app.views.engine import trial
        from headrace.app.views.tree import label

        engine = trial(self, frames)
        return {label(path): kind for path, kind in engine.kinds.items()}

    def servable(self, title: str | None = None) -> pn.viewable.Viewable:
        """Serve this view alone as the app's page (``panel serve`` / ``headrace serve``)."""
        return self.__panel__().servable(title=title)


def view(
    function: ViewFunction | None = None,
    /,
    *,
    name: str | None = None,
    follow: Seconds | None = None,
    history: bool = True,
    title: str | None = None,
    **inputs: Rows | str,
) -> Any:
    """Declare a live view: ``view(fn, rows="pump")`` or ``@view(rows="pump")`` on ``fn``.

    Each keyword names an argument of ``fn`` and gives its input: a stream's name (its
    rows as they arrive) or a :class:`Rows`. ``follow`` is how many seconds of the newest
    data a time axis shows until the viewer pans or zooms (default: the process's
    setting); ``history=False`` leaves the view out of the look-back windows; ``title``
    goes before the streams' names and freshness above the plot.
    """
    given = {k: rows(v) if isinstance(v, str) else v for k, v in inputs.items()}
    for argument, value in given.items():
        if not isinstance(value, Rows):
            raise TypeError(
                f"live.view(): input {argument}={value!r}: give a stream's name or live.rows(...)"
            )
    if function is None:
        return lambda fn: View(fn, given, name, follow, history, title)
    return View(function, given, name, follow, history, title)


_checked: set[str] = set()  # views checked in this process (a script runs per session)


def refuse_early(view: View) -> None:
    """Refuse, as it is declared, a view that could never stream (a ``DynamicMap``, or a
    histogram of appended rows), by calling it once on rows with no rows.

    Anything else (a column only the stream's real rows have) waits for those rows.
    """
    if view.name in _checked:
        return
    _checked.add(view.name)
    from headrace.app.views.hvinternals import data_only
    from headrace.app.views.tree import ViewError, backend, elements, refuse_summary
    from headrace.etl.contract.frames import empty_frame

    backend()
    try:
        with data_only():
            result = view.function(**{argument: empty_frame() for argument in view.inputs})
        found = list(elements(result, view.name))
    except ViewError:
        _checked.discard(view.name)
        raise
    except Exception:
        return  # decided with real rows
    appended = [r.stream for r in view.inputs.values() if r.appended]
    if len(appended) == len(view.inputs):
        try:
            for item in found:
                refuse_summary(view.name, type(item.element).__name__, appended)
        except ViewError:
            _checked.discard(view.name)
            raise


def _qualname(function: ViewFunction) -> str:
    return getattr(function, "__qualname__", type(function).__name__)


def _place(function: ViewFunction) -> str:
    """``file.py:line:name``: the same in each run of a script (``__module__`` is not)."""
    code = getattr(function, "__code__", None)
    if code is None:
        return _qualname(function)
    return f"{Path(code.co_filename).name}:{code.co_firstlineno}:{_qualname(function)}"
