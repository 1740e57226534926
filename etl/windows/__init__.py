"""Windows over event time: tumbling, hopping and session, with grace and idle bounds.

>>> from headrace.etl.windows import Hopping
>>> Hopping("10s", "2s", agg=["max", "mean"], grace="2s")
Hopping('10s', step='2s', agg=['max', 'mean'], grace='2s')

Each is a :class:`~headrace.etl.steps.Transform` for ``Stream(transform=...)``; in the
YAML config a mapping with ``window:`` (:func:`from_config`).
"""

from __future__ import annotations

from collections.abc import Mapping

from headrace.etl.windows.aggregate import AGGS, M4
from headrace.etl.windows.early import latest
from headrace.etl.windows.fixed import Hopping, Tumbling, Window
from headrace.etl.windows.join import AsofJoin, IntervalJoin
from headrace.etl.windows.session import Session

__all__ = [
    "AGGS",
    "M4",
    "AsofJoin",
    "Hopping",
    "IntervalJoin",
    "Session",
    "Tumbling",
    "Window",
    "from_config",
    "latest",
]

_KINDS = {
    "tumbling": (Tumbling, ("size",)),
    "hopping": (Hopping, ("size", "step")),
    "session": (Session, ("gap",)),
}
_OPTIONS = ("agg", "grace", "idle_close", "emit", "key_skew")


def from_config(spec: Mapping[str, object]) -> Window | Session | AsofJoin | IntervalJoin:
    """A window from ``{window: tumbling|hopping|session, size|step|gap: ..., agg: ...,
    grace: ..., idle_close: ..., emit: final|early, key_skew: ...}``, or a join from ``{join: asof,
    left: a, right: b, tolerance: 100ms, grace: ..., wait: 5s}`` (``join: interval``
    with ``within: 100ms`` instead of ``tolerance``); ValueError naming the setting."""
    spec = dict(spec)
    if "join" in spec:
        return _join(spec)
    kind = spec.pop("window")
    if kind not in _KINDS:
        raise ValueError(f"window: {kind!r} is not one of {', '.join(_KINDS)}")
    cls, needed = _KINDS[kind]  # type: ignore[index]
    missing = [n for n in needed if n not in spec]
    if missing:
        raise ValueError(f"a {kind} window needs {' and '.join(missing)}")
    unknown = set(spec) - set(needed) - set(_OPTIONS)
    if unknown:
        known = ", ".join([*needed, *_OPTIONS])
        raise ValueError(f"unknown settings {sorted(unknown)} for a {kind} window; known: {known}")
    args = [spec.pop(n) for n in needed]
    return cls(*args, **spec)


_JOINS = {"asof": (AsofJoin, "tolerance"), "interval": (IntervalJoin, "within")}


def _join(spec: dict) -> AsofJoin | IntervalJoin:
    kind = spec.pop("join")
    if kind not in _JOINS:
        raise ValueError(f"join: {kind!r} is not one of {', '.join(_JOINS)}")
    cls, reach = _JOINS[kind]
    missing = [n for n in ("left", "right", reach) if n not in spec]
    if missing:
        raise ValueError(f"an {kind} join needs {' and '.join(missing)}")
    known = ["left", "right", reach, "grace", "wait"]
    unknown = set(spec) - set(known)
    if unknown:
        raise ValueError(
            f"unknown settings {sorted(unknown)} for an {kind} join; known: {', '.join(known)}"
        )
    return cls(**spec)
