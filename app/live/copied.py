"""Pages opened as copies: a session costs a copy of a page built earlier, not a build.

Building a session's page (the page's code, Panel's template and components, Bokeh's
document) costs a Panel process ~60 ms of the event loop that feeds every viewer.
A page whose behaviour lives on its Bokeh models (a :class:`Page`: our dashboard) is
built so once per process, key and :data:`MAX_AGE`; the document it built is kept as
a snapshot (:func:`~headrace.app.live.internals.snapshot`, the same model ids), and every
later open of the same key gets a copy of that snapshot
(:func:`~headrace.app.live.internals.copy_document`) with the page's controller bound to
the copied models (:meth:`Page.bind`). The copy serialises as the snapshot does, so its
``PULL-DOC`` reply is the snapshot's, serialised once
(:func:`~headrace.app.live.internals.serialise_ahead`), unless the session changed
before its browser pulled it. Its sources hold the snapshot's rows, and the fan-out
sends the rows since (``Fanout.register(holding=)``), encoded once for every copy of
the same snapshot.

A copy is a real Bokeh session: the models are its own (zoom, widgets and history
windows act on this viewer's page only), its controller is built per session, and a
key is a page's name, its query arguments (the theme among them) and its user, so a
copy is only ever made of a page built for the same ones. A copy that fails falls back
to a build, logged once with the reason.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from headrace.app.live.internals import (
    Copies,
    arguments_key,
    clear_document,
    copy_document,
    serialise_ahead,
    snapshot,
)

if TYPE_CHECKING:
    from bokeh.document import Document

log = logging.getLogger(__name__)

# Seconds a snapshot is copied before an open builds the page again: the rows since it
# was taken go to each copy when it opens (a rebuild every 30 s costs a process ~2 ms/s).
MAX_AGE = 30.0
KEYS = 16  # snapshots kept per process (pages, themes, users), the most recently opened
C = TypeVar("C", bound="Controller")


class Controller(Protocol):
    def record(self) -> Any:
        """What :meth:`Page.bind` needs beyond the models (taken right after a build)."""


class Page(Protocol[C]):
    """A page that can be opened as a copy: its behaviour is a controller on its models."""

    name: str

    def build(self) -> C:
        """Build the page in the current session's document (Panel renders it); its
        controller bound to the document's own models."""

    def fresh(self, record: Any) -> bool:
        """Whether a copy of the page built with ``record`` would show what a build would
        (else the next open builds it again)."""

    def bind(self, doc: Document, copies: Copies, record: Any) -> C:
        """A controller for ``doc``, a copy of a built page (``copies``: by original id)."""

    def undo(self, doc: Document) -> None:
        """Let go of what a :meth:`bind` that failed made for ``doc`` (its sinks)."""


@dataclass
class Snapshot:
    doc: Document  # never served: the copies' original
    json: Any  # its PULL-DOC content, serialised once
    record: Any  # the built page's controller's record
    taken: float  # time.monotonic()


@dataclass
class Opened(Generic[C]):
    controller: C
    copied: bool


class Copier:
    """One process's snapshots, and the way every session of a :class:`Page` opens."""

    def __init__(self, max_age: float = MAX_AGE) -> None:
        self.max_age = max_age
        self.snapshots: OrderedDict[tuple, Snapshot] = OrderedDict()
        self.copied = self.built = self.failed = 0
        self._told: set[str] = set()  # reasons a copy failed, logged once each

    def open(self, page: Page[C]) -> Opened[C]:
        """Make the current session's document ``page``: a copy, or else a build."""
        from panel.io.state import state

        doc = state.curdoc
        key = _key(page.name, doc, state.user)
        kept = self.snapshots.get(key)
        if (
            kept is not None
            and time.monotonic() - kept.taken <= self.max_age
            and page.fresh(kept.record)
        ):
            try:
                copies = copy_document(kept.doc, doc)
                serialise_ahead(doc, kept.json)  # unchanged, it is the snapshot's
                controller = page.bind(doc, copies, kept.record)
                self.snapshots.move_to_end(key)
                self.copied += 1
                return Opened(controller, True)
            except Exception as exc:  # the page still opens: built, as without copies
                page.undo(doc)
                self._fell_back(page, doc, exc)
        controller = page.build()
        shot = snapshot(doc)
        self.snapshots[key] = Snapshot(shot, shot.to_json(), controller.record(), time.monotonic())
        self.snapshots.move_to_end(key)
        while len(self.snapshots) > KEYS:
            self.snapshots.popitem(last=False)
        self.built += 1
        return Opened(controller, False)

    def _fell_back(self, page: Page[Any], doc: Document, exc: Exception) -> None:
        self.failed += 1
        reason = f"{type(exc).__name__}: {exc}"
        if reason not in self._told:
            self._told.add(reason)
            log.warning("%s: a session's copy failed, built instead (%s)", page.name, reason)
        clear_document(doc)  # what the copy added goes; the build starts from an empty one

    def info(self) -> dict[str, int]:
        """Counts for metrics and tests."""
        return {"copied": self.copied, "snapshots_built": self.built, "copy_failed": self.failed}


def _key(name: str, doc: Document, user: Any) -> tuple:
    """What a page's build may depend on: the page, its query arguments and its user."""
    context = doc.session_context
    return (name, arguments_key(context.request.arguments if context else None), user)
