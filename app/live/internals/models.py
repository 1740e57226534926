"""Bokeh models copied, serialised lean, rendered in a scratch document (see the package)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from bokeh.core.has_props import HasProps
from bokeh.core.property.wrappers import PropertyValueContainer
from bokeh.model import Model

if TYPE_CHECKING:
    from bokeh.document import Document

M = TypeVar("M", bound=Model)


def clone(root: M) -> M:
    """A copy of ``root`` and every model it references, detached from any document.

    Numpy arrays (a source's columns) are shared, not copied: replace a copy's data
    rather than change the arrays in place.
    """
    return Copies()(root)


_made: dict[tuple, Model] = {}  # by class and properties: the first of each, made


def made(cls: type[M], /, *, text: str | None = None, **props: Any) -> M:
    """A new ``cls(**props)`` (and ``text``, a Div's), made as a copy of the first one made
    with these properties in this process.

    Making a Bokeh model validates every property given and fills in every default;
    a copy (:class:`Copies`) takes them as they are, at a tenth of the cost: a session's
    page makes dozens of Divs and layouts alike. ``text``, the one property that differs
    from copy to copy, is set on the copy. ``props`` must be values, not models.
    """
    key = (cls, repr(sorted(props.items())))
    first = _made.get(key)
    if first is None:
        first = _made[key] = cls(**props)
    model = Copies(renew=True)(first)
    if text is not None:
        model.text = text
    return model


class Copies:
    """Copies made together: a model referenced from several roots is copied once."""

    def __init__(self, renew: bool = False) -> None:
        # With renew, copies get new ids: for a document that holds copies already.
        self.renew = renew
        self.done: dict[str, Model] = {}  # by the original's id

    def __call__(self, m: M) -> M:
        return self.model(m)

    def model(self, m: Any) -> Any:
        new = self.done.get(m.id)
        if new is not None:
            return new
        cls = type(m)
        # How Bokeh's Deserializer makes a model of a given id (None: a new one).
        new = cls.__new__(cls, id=None if self.renew else m.id)
        self.done[m.id] = new
        super(HasProps, new).__init__()  # the callback managers and document ref, as HasProps does
        new._property_values = self._values(new, m._property_values)
        new._unstable_default_values = self._values(new, m._unstable_default_values)
        new._unstable_themed_values = dict(m._unstable_themed_values)
        new._initialized = True
        return new

    def _values(self, owner: Model, values: dict[str, Any]) -> dict[str, Any]:
        copied = {}
        for name, value in values.items():
            new = self.value(value)
            if isinstance(value, PropertyValueContainer):
                # Wrapped as a property setter does, so changes to the copy notify the copy.
                descriptor = owner.lookup(name)
                new = descriptor.property.wrap(new)
                new._register_owner(owner, descriptor)
            copied[name] = new
        return copied

    def value(self, v: Any) -> Any:
        if isinstance(v, Model):
            return self.model(v)
        if isinstance(v, dict):
            return {k: self.value(x) for k, x in v.items()}
        if isinstance(v, list):
            return [self.value(x) for x in v]
        if isinstance(v, tuple):
            return tuple(self.value(x) for x in v)
        if isinstance(v, set):
            return {self.value(x) for x in v}
        return v  # immutable, or an array (shared)


def lean_serialisation() -> None:
    """Serialise models without computing the defaults that are left out anyway.

    Installed once per process (every page headrace serves does it); idempotent.
    """
    if getattr(HasProps.query_properties_with_values, "headrace", False):
        return
    original = HasProps.query_properties_with_values

    def query_properties_with_values(
        self: HasProps,
        query: Any,
        *,
        include_defaults: bool = True,
        include_undefined: bool = False,
    ) -> dict[str, Any]:
        if include_defaults or include_undefined:
            return original(
                self, query, include_defaults=include_defaults, include_undefined=include_undefined
            )
        # Bokeh's own selection (set, unstable defaults, themed), in its order.
        themed = self.themed_values() or {}
        unstable = self._unstable_default_values
        selected = self._property_values.keys() | unstable.keys() | themed.keys()
        result = {}
        for key in self.properties(_with_props=True):
            if key not in selected:
                continue
            descriptor = self.lookup(key)
            if not query(descriptor):
                continue
            value = descriptor.get_value(self)
            if key not in themed and key in unstable and isinstance(value, PropertyValueContainer):
                continue  # an unmodified container default, as Bokeh weeds out
            result[key] = value
        return result

    query_properties_with_values.headrace = True  # type: ignore[attr-defined]
    query_properties_with_values.original = original  # type: ignore[attr-defined]
    HasProps.query_properties_with_values = query_properties_with_values  # type: ignore[method-assign]


def quick_references() -> None:
    """Walk a model's references without computing the defaults that hold none.

    Bokeh's walk (``Model.references``, ``select``, a document's ``recompute``: several
    per session built) reads every property that may hold a model, and for each one
    nobody set it computes the default again (a ``None`` through the theme machinery):
    a fifth of a session's build. A default that is stable (not made per instance) and
    holds no model is skipped; everything else is read as Bokeh reads it, so the walk
    finds the same models in the same order, and unstable defaults are made as Bokeh
    makes them. Installed once per process; idempotent.
    """
    import bokeh.model.util as util

    original = util.visit_immediate_value_references
    if getattr(original, "headrace", False):
        return
    visit_value = util.visit_value_and_its_immediate_references
    plans: dict[type, list[tuple[str, bool]]] = {}

    def plan(cls: type[HasProps]) -> list[tuple[str, bool]]:
        found: list[Model] = []
        names = []
        for name, prop in cls.properties_with_refs().items():
            stable = not prop._may_have_unstable_default()
            if stable:
                found.clear()
                visit_value(cls.lookup(name).class_default(cls), found.append)
                stable = not found
            names.append((name, stable))
        plans[cls] = names
        return names

    def visit_immediate_value_references(value: Any, visitor: Any) -> None:
        if not isinstance(value, HasProps):
            visit_value(value, visitor)
            return
        names = plans.get(type(value)) or plan(type(value))
        values, unstable = value._property_values, value._unstable_default_values
        themed = value.themed_values()
        for name, stable in names:
            if name in values:
                child = values[name]
            elif themed is not None and name in themed:
                child = getattr(value, name)
            elif name in unstable:
                child = unstable[name]
            elif stable:
                continue
            else:
                child = getattr(value, name)  # made and kept, as Bokeh does
            visit_value(child, visitor)

    visit_immediate_value_references.headrace = True  # type: ignore[attr-defined]
    visit_immediate_value_references.original = original  # type: ignore[attr-defined]
    util.visit_immediate_value_references = visit_immediate_value_references


class _References(dict):
    """Bokeh's ``Serializer`` references (object id -> ``model.ref``), made when asked for.

    Bokeh makes the ref of every synced model of the document for each message it
    serialises, however small (a status line's new text in a 200-model page: 200 refs,
    two thirds of that message's cost); most are never looked at.
    """

    __slots__ = ("_models",)

    def __init__(self, models: Any) -> None:
        super().__init__()
        self._models = {id(model): model for model in models}

    def __contains__(self, key: object) -> bool:
        return dict.__contains__(self, key) or key in self._models

    def get(self, key: Any, default: Any = None) -> Any:
        ref = dict.get(self, key)
        if ref is None:
            model = self._models.get(key)
            if model is None:
                return default
            ref = model.ref
            dict.__setitem__(self, key, ref)
        return ref


def lazy_references() -> None:
    """Serialise with the references of a document's models made as needed (idempotent)."""
    from bokeh.core.serialization import Serializer

    original = Serializer.__init__
    if getattr(original, "headrace", False):
        return

    def __init__(self: Serializer, *, references: Any = frozenset(), **kwargs: Any) -> None:
        original(self, **kwargs)
        self._references = _References(references)

    __init__.headrace = True  # type: ignore[attr-defined]
    __init__.original = original  # type: ignore[attr-defined]
    Serializer.__init__ = __init__  # type: ignore[method-assign]


def serialise_ahead(doc: Document, ahead: Any = None) -> None:
    """Serialise ``doc`` now; its next ``to_json()`` (a PULL-DOC reply) returns that,
    unless the document changed in between. Once: later calls serialise as usual.

    ``ahead``: ``doc``'s serialisation made already (a copy's is its original's:
    :func:`~headrace.app.live.internals.documents.copy_document`).
    """
    from bokeh.document import Document
    from bokeh.document.events import SessionCallbackAdded, SessionCallbackRemoved

    if ahead is None:
        ahead = doc.to_json()
    changed: list[object] = []

    def change(event: object) -> None:
        # A callback scheduled on the session changes no model: the serialisation holds.
        if not isinstance(event, SessionCallbackAdded | SessionCallbackRemoved):
            changed.append(event)

    def to_json(*, deferred: bool = True) -> Any:
        del doc.to_json  # Bokeh's own again
        doc.remove_on_change(change)
        return ahead if deferred and not changed else Document.to_json(doc, deferred=deferred)

    doc.on_change(change)
    doc.to_json = to_json  # type: ignore[method-assign]


@contextmanager
def scratch_document() -> Iterator[Any]:
    """A new document as Bokeh's ``curdoc()`` inside, cleared after.

    Bokeh's ``patch_curdoc`` pops its document only when its body returns: a body that
    raises (a view HoloViews cannot render) would leave a dead document as every later
    ``curdoc()`` of the process. This restores Bokeh's list of patched documents always.
    """
    from bokeh.document import Document
    from bokeh.io import doc as bokeh_doc

    depth = len(bokeh_doc._PATCHED_CURDOCS)
    document = Document()
    try:
        with bokeh_doc.patch_curdoc(document):
            yield document
    finally:
        del bokeh_doc._PATCHED_CURDOCS[depth:]
        document.clear()
