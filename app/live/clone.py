"""Copies of a rendered Bokeh figure with the same model ids, for a session in a millisecond.

Rendering a HoloViews element costs a session 35-125 ms (Bokeh's property machinery
fills every default of ~50 models, in a live document with change events); a copy of
a figure rendered once per process costs ~1.5 ms. A copy is what Bokeh's deserializer
would build from the figure's JSON (new models, same ids, same property values) without
the JSON, the validation or the defaults nobody set: each model's set and computed
values are copied, model references replaced by their copies.

Equal ids are safe because ids need only be unique within a document (each session
has its own), and they are what lets :mod:`headrace.app.live.wire` encode one ``PATCH-DOC`` for
every session at the same row.
"""

from __future__ import annotations

from typing import Any, TypeVar

from bokeh.core.has_props import HasProps
from bokeh.core.property.wrappers import PropertyValueContainer
from bokeh.model import Model

# Private Bokeh internals (Model.__new__(id=), HasProps' value dicts, property wrappers):
# written for headrace.app.live.wire.BOKEH_TESTED, which tests/test_internals.py checks.
M = TypeVar("M", bound=Model)


def clone(root: M) -> M:
    """A copy of ``root`` and every model it references, detached from any document.

    Numpy arrays (a source's columns) are shared, not copied: replace a copy's data
    rather than change the arrays in place.
    """
    return Copies()(root)


class Copies:
    """Copies made together: a model referenced from several roots is copied once."""

    def __init__(self) -> None:
        self.done: dict[str, Model] = {}

    def __call__(self, m: M) -> M:
        return self.model(m)

    def model(self, m: Any) -> Any:
        new = self.done.get(m.id)
        if new is not None:
            return new
        cls = type(m)
        new = cls.__new__(cls, id=m.id)  # how Bokeh's Deserializer makes a model of a given id
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
