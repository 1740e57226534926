"""A view's function called on a process's rows: its arguments made, its errors named.

:class:`Calls` makes the function's :class:`pandas.DataFrame` arguments from the
process's subscriber (each tick's new rows, a lookback before them, or a window of the
newest rows), calls it and counts the calls, and turns whatever it raises into a
:class:`~headrace.app.views.tree.ViewError` naming the view, its streams and their columns.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pandas as pd

from headrace.app.live.columns import Columns, take
from headrace.app.views.hvinternals import data_only
from headrace.app.views.tree import ViewError, backend

if TYPE_CHECKING:
    from headrace.app.live.subscriber import Subscriber

TAG = "headrace.input"  # pandas keeps a frame's attrs through filters: finds what a glyph reads
APPENDED, WINDOW = "appended", "window"  # the two kinds of input


class Input(Protocol):
    stream: str
    lookback: float
    span: float | None


class View(Protocol):
    """What a process needs of a declared view (:class:`headrace.app.views.declare.View`)."""

    name: str
    function: Callable[..., Any]
    inputs: dict[str, Input]
    follow: float | None
    title: str | None

    @property
    def streams(self) -> list[str]: ...

    @property
    def key(self) -> tuple: ...


class Calls:
    """Calls of one view's function with this process's rows."""

    def __init__(self, view: View, subscriber: Subscriber) -> None:
        self.view = view
        self.subscriber = subscriber
        self.kinds = {a: WINDOW if g.span is not None else APPENDED for a, g in view.inputs.items()}
        self.lookback = any(g.lookback for g in view.inputs.values())  # rows given again
        self.count = 0  # calls, for the whole process
        self._empties: dict[str, Columns] = {}

    def inputs(
        self, arrived: tuple[str, Columns] | None = None, whole: bool = False, skip: str = ""
    ) -> dict[str, pd.DataFrame]:
        """The function's arguments: new rows of ``arrived``, or whole windows.

        ``skip`` (:data:`APPENDED` or :data:`WINDOW`) gives inputs of that kind empty.
        """
        frames = {}
        for argument, given in self.view.inputs.items():
            new = arrived is not None and arrived[0] == given.stream
            if self.kinds[argument] == skip or not (whole or given.span or new):
                columns = self._empty(given.stream)
            elif new and not whole and not given.span and not given.lookback:
                columns = arrived[1]  # the common case: no copy of the window
            else:
                columns = self.subscriber.snapshot(given.stream).columns
                if given.span is not None:
                    columns = newest(columns, given.span)
                elif not whole:
                    rows = arrived[1]
                    start = rows["time"][0] - np.timedelta64(int(given.lookback * 1e9), "ns")
                    columns = take(columns, int(np.searchsorted(columns["time"], start)))
            frame = pd.DataFrame(columns, copy=False)
            frame.attrs[TAG] = argument
            frames[argument] = frame
        return frames

    def _empty(self, stream: str) -> Columns:
        columns = self._empties.get(stream)
        if columns is None:
            columns = take(self.subscriber.snapshot(stream).columns, 0, 0)
            if len(columns) > 1:  # the stream's columns are known (it has had rows)
                self._empties[stream] = columns
        return columns

    def __call__(
        self, frames: dict[str, pd.DataFrame], count: bool = True, styled: bool = False
    ) -> Any:
        """The function's result for ``frames``.

        ``count``: a live call, counted; ``styled``: with the options the function sets
        (for rendering; otherwise only the elements' data is read, at a third of the cost).
        """
        backend()
        self.count += count
        name = self.view.name
        try:
            if styled:
                return self.view.function(**frames)
            with data_only():
                return self.view.function(**frames)
        except KeyError as exc:
            column = exc.args[0] if exc.args else exc
            raise ViewError(
                f"view {name}: no column {column!r} ({self.described(frames)})"
            ) from exc
        except ViewError:
            raise
        except Exception as exc:
            text = str(exc).splitlines()[0][:300] if str(exc) else ""
            raise ViewError(
                f"view {name}: its function raised {type(exc).__name__}: {text} "
                f"({self.described(frames)})"
            ) from exc

    def described(self, frames: dict[str, pd.DataFrame]) -> str:
        """The inputs, their streams and columns: what an error message points at."""
        return "; ".join(
            f"{arg} = stream {given.stream!r} with columns "
            + ", ".join(map(str, frames[arg].columns))
            for arg, given in self.view.inputs.items()
        )


def newest(columns: Columns, seconds: float) -> Columns:
    """The rows of the newest ``seconds``."""
    times = columns["time"]
    if not len(times):
        return columns
    start = times[-1] - np.timedelta64(int(seconds * 1e9), "ns")
    return take(columns, int(np.searchsorted(times, start, side="right")))
