"""A served document made as a copy of another: models, template and settings (see the package)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from panel.config import _config

from headrace.app.live.internals.models import Copies

if TYPE_CHECKING:
    from bokeh.document import Document


def copy_document(source: Document, doc: Document) -> Copies:
    """Make ``doc`` (a new session's, empty) a copy of ``source``; returns the copies.

    The roots (and every model they reference) keep their ids, so ``doc`` serialises
    as ``source`` does; its configuration (a model, ``Document._config``), title, Jinja
    template and variables (the page's HTML), Bokeh theme, browser-side callbacks
    (``js_on_event``) and Panel's settings of the session (``config._session_config``:
    the design, whose JavaScript the page loads) are ``source``'s. The callbacks
    replace any ``doc`` had: Panel gives every session the same ones (its loading
    spinner's), under ids of their own.
    """
    copies = Copies()
    roots = [copies(root) for root in source.roots]
    callbacks = source.callbacks._js_event_callbacks
    doc._config = copies(source._config)  # notifications: as Bokeh's replace_with carries it
    doc.title = source.title
    doc.template = source.template
    doc.template_variables.update(source.template_variables)
    if doc.theme is not source.theme:
        doc.theme = source.theme
    with doc.models.freeze():  # one walk of the models for all the roots
        for root in roots:
            doc.add_root(root)
    doc.callbacks._js_event_callbacks = {
        event: [copies(callback) for callback in chain] for event, chain in callbacks.items()
    }
    # Panel's settings of the session (its template's design and theme, which pick the
    # page's JavaScript: Bootstrap's), kept per document.
    settings = _config._session_config.get(source)
    if settings:
        _config._session_config[doc] = dict(settings)
    return copies


def snapshot(doc: Document) -> Document:
    """A copy of ``doc`` (:func:`copy_document`) in a document of its own, never served:
    what later sessions of the same page are copied from, unchanged by ``doc``'s viewer."""
    from bokeh.document import Document

    copy = Document()
    copy_document(doc, copy)
    return copy


def clear_document(doc: Document) -> None:
    """Undo :func:`copy_document`: ``doc`` empty again, to be built as usual."""
    doc.clear()
    doc.callbacks._js_event_callbacks = {}
    _config._session_config.pop(doc, None)
