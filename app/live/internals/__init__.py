"""Everything headrace takes from Bokeh's, Panel's and Tornado's private internals.

Two things a session costs far less with, kept in this one sub-package so that an upgrade of
those libraries has one place to re-check (``tests/test_internals.py`` fails, naming it,
on any release series but the ones below, which the lock file pins):

- **Copies of a rendered figure** (:func:`clone`, :class:`Copies`). Rendering a HoloViews
  element costs a session 35-125 ms (Bokeh's property machinery fills every default of
  ~50 models, in a live document with change events); a copy of a figure rendered once
  per process costs ~1.5 ms. A copy is what Bokeh's deserializer would build from the
  figure's JSON (new models, same ids, same property values) without the JSON, the
  validation or the defaults nobody set. Equal ids are safe because ids need only be
  unique within a document (each session has its own).
- **Models made as copies** (:func:`made`): a page's Divs and layouts, each a copy of
  the first made with the same properties (:class:`Copies`), at a tenth of the cost of
  making one.
- **A document serialised without the defaults nobody set** (:func:`lean_serialisation`).
  Bokeh's ``query_properties_with_values`` computes and validates every declared
  property's value (a dashboard page: ~4,000 properties, ~500 set) and only then drops
  the defaults; a session's ``PULL-DOC`` reply was a fifth of its open. Looking at the
  set, unstable and themed values first gives the same JSON (``tests/test_internals.py``
  compares it byte for byte) at a sixth of the cost.
- **Reference walks that skip defaults holding no model** (:func:`quick_references`):
  Bokeh computes the default of every unset property that may hold a model each time it
  walks a model's references (several times per session built); those whose default is
  stable and holds none are skipped, and the walk finds the same models in the same order.
- **References made as needed** (:func:`lazy_references`): Bokeh's ``Serializer`` makes
  the ref of every model of the document for each ``PATCH-DOC``, however small; they are
  made when one is looked up.
- **A page's HTML rendered once** (:func:`cached_pages`): with ``--reuse-sessions`` every
  ``GET`` renders the same session's page again (every model walked, the template
  rendered); it is rendered once and later ``GET`` s get it with their own token.
  **Settings set for a block by what they are given** (:func:`quick_config_set`): a
  template renders each of its parts inside ``pn.config.set(design=...)``, which saved
  and compared every Panel setting; it saves and restores the given ones.
  **A page validated once** (:func:`validate_once`): Bokeh's integrity checks run on an
  application's first document in the process, not on every session built by the same
  code.
- **Sessions opened in turn, or prepared ahead** (:func:`gate_sessions`,
  :func:`prepare_session`, :func:`adopt_session`): Bokeh's ``WSHandler._async_open``
  (make the session, send the ACK) wrapped so that a process builds sessions one at a
  time between flushes (:mod:`headrace.app.live.admission`), and an open takes a
  session built ahead for the same page, arguments and user, renamed to its id
  (:mod:`headrace.app.live.prepared`); its ``PULL-DOC`` reply serialised while it
  waited (:func:`serialise_ahead`, a ``to_json`` on the document instance).
- **A session's document made as a copy of a page built earlier** (:func:`copy_document`,
  :func:`snapshot`, :func:`clear_document`): the roots with their ids, and the
  document's configuration model, title, Jinja template and variables, theme,
  browser-side callbacks (``Document.callbacks``' private ``_js_event_callbacks``) and
  Panel's settings of the session (``config._session_config``), so that the copy
  serialises and is served as its original (:mod:`headrace.app.live.copied`).
- **A scratch document that survives errors** (:func:`scratch_document`): Bokeh's
  ``patch_curdoc`` leaves its document patched when its body raises.
- **Streamed rows as protocol bytes, encoded once** (:func:`encode`, :class:`Socket`,
  :func:`sockets`). Bokeh encodes a ``PATCH-DOC`` per session: for ``cds.stream`` the
  JSON names the source by model id and the buffers are the rows. Sessions whose
  sources have the same id (copies) and that are at the same row get the very same
  message, so :func:`encode` builds it once with Bokeh's own ``Serializer`` and
  :class:`Socket` writes its websocket frames in one write per connection, through the
  attributes Panel's ``unlocked()`` uses: a session's connections
  (``ServerSession._subscribed_connections``), a connection's handler, its write lock
  (held while Bokeh is in the middle of sending a message: frames must not interleave)
  and the Tornado stream under it.
"""

from headrace.app.live.internals.documents import clear_document, copy_document, snapshot
from headrace.app.live.internals.models import (
    Copies,
    clone,
    lazy_references,
    lean_serialisation,
    made,
    quick_references,
    scratch_document,
    serialise_ahead,
)
from headrace.app.live.internals.pages import cached_pages, quick_config_set, validate_once
from headrace.app.live.internals.sessions import (
    adopt_session,
    arguments_key,
    gate_sessions,
    prepare_session,
    release_session,
    session_key,
)
from headrace.app.live.internals.wire import BINARY, TEXT, Encoded, Socket, encode, frame, sockets


def install(head: str = "") -> None:
    """Everything above that applies to every page of the process (idempotent): lean and
    lazy serialisation, quick reference walks, pages rendered once (``head``: HTML put
    first in their ``<head>``), a page validated once, quick ``config.set``."""
    lean_serialisation()
    quick_references()
    lazy_references()
    cached_pages(head)
    validate_once()
    quick_config_set()


# The release series the private attributes used here were checked against:
# tests/test_internals.py fails on any other version (pyproject.toml caps bokeh and panel).
BOKEH_TESTED = "3.9"
PANEL_TESTED = "1.9"
TORNADO_TESTED = "6.6"

__all__ = [
    "BINARY",
    "BOKEH_TESTED",
    "PANEL_TESTED",
    "TEXT",
    "TORNADO_TESTED",
    "Copies",
    "Encoded",
    "Socket",
    "adopt_session",
    "arguments_key",
    "cached_pages",
    "clear_document",
    "clone",
    "copy_document",
    "encode",
    "frame",
    "gate_sessions",
    "install",
    "lazy_references",
    "lean_serialisation",
    "made",
    "prepare_session",
    "quick_config_set",
    "quick_references",
    "release_session",
    "scratch_document",
    "serialise_ahead",
    "session_key",
    "snapshot",
    "sockets",
    "validate_once",
]
