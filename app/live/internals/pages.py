"""A page's HTML rendered once per session Panel reuses, and a page validated once per app.

With ``--reuse-sessions`` every ``GET`` of a page is answered from one session kept per
process (and theme), yet Panel renders that session's HTML again for each: it walks every
model (stylesheet paths, the extensions' resources) and renders the template, ~40 ms of
the process's loop per viewer in a crowd, for a page that differs from the last one only
in its session token. :func:`cached_pages` renders it once with a stand-in token and
answers later ``GET`` s with the real token put in its place, as long as the session,
its roots, the kinds of model in it and everything else the page is made from are the
same (``tests/test_internals.py`` compares it with Panel's own page).

Bokeh validates each new document (``check_integrity``: the warnings of an empty layout
and the like), a seventh of a session's build. The same code builds the same page again,
so :func:`validate_once` validates the first document of each application in the process
and skips it for the later ones, as ``BOKEH_VALIDATE_DOC=false`` would for all.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

log = logging.getLogger(__name__)

STAND_IN = "headrace-token-stand-in"  # JSON- and HTML-safe, so it is in the page as it is
KEEP = 32  # pages kept per process: one per reused session (a page and theme)


def cached_pages(head: str = "") -> None:
    """Answer a reused session's ``GET`` from its page rendered once (idempotent).

    ``head``: HTML put first in every page's ``<head>`` (scripts that must run before
    BokehJS), cached or not.
    """
    import panel.io.server as server
    from panel.config import config
    from panel.io.state import state

    original = server.server_html_page_for_session
    if getattr(original, "headrace", False):
        return
    pages: dict[int, tuple[weakref.ref, tuple, str]] = {}

    def server_html_page_for_session(
        session: Any,
        resources: Any,
        title: str,
        token: str | None = None,
        template: Any = server.BASE_TEMPLATE,
        template_variables: dict[str, Any] | None = None,
    ) -> str:
        token = token or session.token
        doc = session.document

        def key() -> tuple:
            return (
                title,
                id(template),
                resources.mode,
                resources.root_url,
                state.rel_path,
                config.theme,
                config.global_loading_spinner,
                tuple(root.id for root in doc.roots),
                frozenset(type(model) for model in doc.models),
                repr(sorted((template_variables or {}).items())),
            )

        def render(as_token: str) -> str:
            page = original(session, resources, title, as_token, template, template_variables)
            return page.replace("<head>", f"<head>{head}", 1)

        cached = pages.get(id(session))
        if cached is not None and cached[0]() is session and cached[1] == key():
            return cached[2].replace(STAND_IN, token)
        page = render(STAND_IN)
        if page.count(STAND_IN) != 1:  # not where a token goes: render this one as Panel does
            return render(token)
        # The key after rendering: Panel sets template variables of the page as it renders.
        pages[id(session)] = (weakref.ref(session), key(), page)
        while len(pages) > KEEP:
            del pages[next(iter(pages))]
        return page.replace(STAND_IN, token)

    server_html_page_for_session.headrace = True  # type: ignore[attr-defined]
    server_html_page_for_session.original = original  # type: ignore[attr-defined]
    server_html_page_for_session.head = head  # type: ignore[attr-defined]
    server.server_html_page_for_session = server_html_page_for_session


def validate_once() -> None:
    """Validate the first document of each application in this process only (idempotent)."""
    from bokeh.application import Application

    original = Application.initialize_document
    if getattr(original, "headrace", False):
        return
    validated: weakref.WeakSet[Application] = weakref.WeakSet()

    def initialize_document(self: Application, doc: Any) -> None:
        if self not in validated:
            original(self, doc)
            validated.add(self)
            return
        # Bokeh's own body, less the validation: later documents are built by the same code.
        for handler in self.handlers:
            handler.modify_document(doc)
            if handler.failed:
                log.error(
                    "Error running application handler %r: %s %s ",
                    handler,
                    handler.error,
                    handler.error_detail,
                )

    initialize_document.headrace = True  # type: ignore[attr-defined]
    Application.initialize_document = initialize_document  # type: ignore[method-assign]


def quick_config_set() -> None:
    """``pn.config.set(...)`` that saves and restores the settings it is given only.

    Panel's saves every setting of the process before the block and compares them all
    after, and a template renders each of its parts inside one
    (``config.set(design=...)``): a twelfth of a dashboard session's build. Settings the
    block changes without being given are left as it set them (rendering a part changes
    none). Installed once per process; idempotent.
    """
    from contextlib import contextmanager

    from panel.config import _config

    original = _config.set
    if getattr(original, "headrace", False):
        return

    @contextmanager
    def set(self: _config, **kwargs: Any) -> Any:
        keys = list(kwargs)
        values = [(k, getattr(self, k)) for k in keys]
        # A setting kept per session has a process-wide value too, as Panel restores it.
        sessional = [f"_{k}" for k in keys if f"_{k}" in _config._parameter_set]
        overrides = [
            (k, getattr(self, f"{k}_")) for k in sessional if k[1:] not in _config._globals
        ]
        for k, v in kwargs.items():
            setattr(self, k, v)
        try:
            yield
        finally:
            restore = {k: v for k, v in values if v is not getattr(self, k)}
            if restore:
                self.param.update(**restore)
            for k, v in overrides:
                setattr(self, f"{k}_", v)

    set.headrace = True  # type: ignore[attr-defined]
    set.original = original  # type: ignore[attr-defined]
    _config.set = set  # type: ignore[method-assign]
