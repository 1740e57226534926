"""Early results: a window published while still open, each later change as a revision.

With ``emit="early"`` a window's current value is published at every tick that changes
it, not only once it closes. The first publication of a window (a ``time`` and ``key``)
has ``revision`` 0; each later one that changes any of its columns has the next number
and replaces it: readers apply revisions (:func:`latest`), the history database
replaces the row, live charts patch the point in place. A tick that leaves a window as
it was publishes nothing for it, so a closed window's last revision is its final value.

The windows published while open travel in the carry (their values and revision), so a
restart publishes the same revisions as an uninterrupted run.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from headrace.etl.contract.frames import KEY, REVISION, TIME

EMITS = ("final", "early")


def emit_mode(value: object) -> str:
    """``value`` as ``final`` or ``early``; ValueError naming the setting."""
    if value not in EMITS:
        raise ValueError(f"emit: {value!r} is not one of {', '.join(EMITS)}")
    return str(value)


def _keys(frame: pd.DataFrame) -> list[str]:
    return [TIME, KEY] if KEY in frame.columns else [TIME]


def _same(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise equality where NaN equals NaN (an empty window stays empty)."""
    return (a == b) | (pd.isna(a) & pd.isna(b))


def _codes(a: pd.DataFrame, b: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """One integer per row for its ``time`` and ``key``, ordered as the rows sort."""
    times = np.concatenate([a[TIME].array.asi8, b[TIME].array.asi8])
    codes = np.unique(times, return_inverse=True)[1].astype(np.int64).ravel()
    if KEY in a.columns:
        keys, uniques = pd.factorize(pd.concat([a[KEY], b[KEY]], ignore_index=True), sort=True)
        codes = codes * (len(uniques) + 1) + keys
    return codes[: len(a)], codes[len(a) :]


def revise(
    closed: pd.DataFrame, open_: pd.DataFrame, before: pd.DataFrame | None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """What to publish this tick, and the open windows as published so far.

    ``closed``: windows that close now (final values); ``open_``: windows still open;
    both sorted by time (and key), the closed ones first. ``before``: the open windows
    published at earlier ticks, with their ``revision``, sorted the same way. Windows
    whose columns did not change since are left out; the others get ``revision`` 0
    (new) or one more than before.
    """
    rows = pd.concat([closed, open_], ignore_index=True) if len(open_) else closed
    revision = np.zeros(len(rows), np.int64)
    changed = np.ones(len(rows), bool)
    if before is not None and len(before) and len(rows):
        was_codes, codes = _codes(before, rows)
        at = np.minimum(np.searchsorted(was_codes, codes), len(was_codes) - 1)
        known = was_codes[at] == codes
        if known.any():
            at = at[known]
            same = np.ones(len(at), bool)
            for column in rows.columns:
                if column not in (TIME, KEY) and column in before.columns:
                    was = before[column].to_numpy()[at]
                    same &= _same(rows[column].to_numpy()[known], was)
            revision[known] = before[REVISION].to_numpy()[at] + (~same)
            changed[known] = ~same
    rows = rows.assign(**{REVISION: revision})
    published_open = rows.iloc[len(closed) :].reset_index(drop=True)
    return rows[changed].reset_index(drop=True), published_open


def latest(frames: list[pd.DataFrame] | pd.DataFrame) -> pd.DataFrame:
    """Frames (in publication order) with revisions applied: each window's last value.

    Without a ``revision`` column every row is its own; with one, a later row for the
    same ``time`` (and ``key``) replaces the earlier. Sorted by time (and key).

    >>> import pandas as pd
    >>> t = pd.Timestamp("2026-12-05", tz="UTC")
    >>> first = pd.DataFrame({"time": [t], "value": [1.0], "revision": [0]})
    >>> second = pd.DataFrame({"time": [t], "value": [3.0], "revision": [1]})
    >>> latest([first, second])["value"].tolist()
    [3.0]
    """
    if isinstance(frames, pd.DataFrame):
        frames = [frames]
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame()
    rows = pd.concat(frames, ignore_index=True)
    if REVISION not in rows.columns:
        return rows
    keys = _keys(rows)
    rows = rows.drop_duplicates(keys, keep="last")
    return rows.sort_values(keys, kind="stable", ignore_index=True)
