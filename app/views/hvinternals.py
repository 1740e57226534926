"""Everything headrace takes from HoloViews' private internals.

Kept in this one module so that an upgrade of HoloViews has one place to re-check
(``tests/test_internals.py`` fails, naming it, on any release series but
:data:`HOLOVIEWS_TESTED`, which the lock file pins and ``pyproject.toml`` caps):

- **HoloViews' plots, read** (:func:`plot_leaves`, :func:`leaf_data`): which element
  each rendered glyph draws, its handles (source, glyph, renderer, figure), and the
  columns HoloViews would put in its source for another element (``get_data``).
- **A view's function called for its data only** (:func:`data_only`). A live view's
  function runs once per process per tick, and its elements are only read for their
  data (the glyphs' style comes from the rendering made once). HoloViews' ``.opts()``
  is most of such a call's cost (8 of 11 ms for the dashboard's plot): inside
  :func:`data_only` it returns the element as it is.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

HOLOVIEWS_TESTED = "1.23"


def plot_leaves(plot: Any) -> list[tuple[Any, dict[str, Any]]]:
    """Each element plot under ``plot`` (HoloViews' rendering) with the element it drew
    and its Bokeh handles (``source``, ``glyph``, ``glyph_renderer``, ``plot``...)."""
    from holoviews.plotting.plot import GenericElementPlot

    return [
        (leaf, {"element": leaf.current_frame, **leaf.handles})
        for leaf in plot.traverse(lambda p: p, [GenericElementPlot])
    ]


def leaf_data(leaf: Any, element: Any) -> dict[str, Any]:
    """The columns ``leaf`` (an element plot) would give its source for ``element``."""
    from holoviews.core.util import match_spec

    ranges = match_spec(element, leaf.current_ranges or {})
    data, _mapping, _style = leaf.get_data(element, ranges, leaf.style[leaf.cyclic_index])
    return data


def leaf_option(leaf: Any, name: str) -> Any:
    """The style option ``name`` HoloViews looked up for the leaf's element."""
    return leaf.lookup_options(leaf.current_frame, "style").kwargs.get(name)


# --- a view's function, called for its data ----------------------------------------------


@contextmanager
def data_only() -> Iterator[None]:
    """HoloViews' ``.opts(...)`` does nothing inside: elements made for their data only.

    Call on one thread at a time (the server's loop): the accessor is patched on its class.
    """
    from holoviews.core.accessors import Opts

    original = Opts.__call__
    Opts.__call__ = _unchanged
    try:
        yield
    finally:
        Opts.__call__ = original


def _unchanged(self: Any, *args: Any, **kwargs: Any) -> Any:
    return self._obj
