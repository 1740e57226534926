"""A page of live views served as copies: :func:`page` (``live.page``).

A page whose Python behaviour is its live views (its other widgets, if any, act in the
browser: ``jscallback``, ``jslink``) need not run its code for every session. The page
is built once per process, theme and user (and again every 30 s), and every other
session is a copy of it whose views are fed as any other
(:mod:`headrace.app.live.copied`): a session opens at the cost of a copy of its models,
not of its build. A page with Python callbacks of its own (``param.watch``,
``pn.bind``, ``on_click``) calls ``.servable()`` as usual instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import panel as pn

from headrace.app import registry
from headrace.app.pages.template import serve
from headrace.app.views.component import LiveView, Shown, close_views, views_of
from headrace.app.views.engine import engine

if TYPE_CHECKING:
    from bokeh.document import Document

    from headrace.app.live.internals import Copies
    from headrace.app.views.declare import View


class Views:
    """One session's live views: the whole of a :func:`page`'s behaviour."""

    def __init__(self, views: list[LiveView]) -> None:
        self.views = views

    def record(self) -> tuple[tuple[View, Shown], ...]:
        return tuple((view.view, view.record()) for view in self.views)


class ViewsPage:
    """A page that ``make()`` lays out (a Panel template or component), opened as copies."""

    def __init__(
        self,
        make: Callable[[], Any],
        name: str,
        title: str | None,
        parts: registry.Registry | None = None,
    ) -> None:
        self.make, self.name, self.title = make, name, title
        self.parts = parts

    def build(self) -> Views:
        laid_out = self.make()
        serve(
            laid_out if isinstance(laid_out, pn.template.BaseTemplate) else pn.panel(laid_out),
            self.title,
        )
        return Views(views_of(pn.state.curdoc))

    def fresh(self, record: tuple[tuple[View, Shown], ...]) -> bool:
        """Every view shows the rendering it would be built with (a plot that came since,
        or a new key, makes the page's code run again: it may look at the plot's models)."""
        fanout = (self.parts or registry.get()).fanout
        return all(shown.version == engine(view, fanout).version for view, shown in record)

    def bind(self, doc: Document, copies: Copies, record: tuple[tuple[View, Shown], ...]) -> Views:
        parts = self.parts or registry.get()
        return Views([LiveView(view, parts, (shown, copies)) for view, shown in record])

    def undo(self, doc: Document) -> None:
        close_views(doc)


def page(make: Callable[[], Any], title: str | None = None, name: str | None = None) -> None:
    """Serve the page ``make()`` returns in this session: a copy of the one this Panel
    process built last for the same page, theme and user, or built (and kept to copy).

    ``make`` lays the page out with :func:`~headrace.app.views.declare.view` and Panel
    (a template or any component); its Python behaviour must be its live views, since
    it runs once per process, not per session. Call it where you would call
    ``.servable()``::

        live.page(lambda: pn.template.BootstrapTemplate(main=[live.view(f, rows="pump")]))
    """
    parts = registry.get()
    parts.copier.open(ViewsPage(make, name or _where(make), title, parts))


def _where(make: Callable[[], Any]) -> str:
    """Where ``make`` is defined, the same in every session: Panel runs an app's script in
    a module of a new name each time (``bokeh_app_<id>``), so ``__module__`` is not."""
    code = getattr(make, "__code__", None)
    if code is not None:
        return f"{code.co_filename}:{code.co_firstlineno}"
    return f"{type(make).__module__}.{type(make).__qualname__}"
