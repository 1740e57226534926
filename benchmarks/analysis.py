"""Turn what the viewers received into latency, completeness and ordering figures.

Definitions (also in the README):

- A row is one 25 ms period. Its ``time`` is the period START (Bokeh sends datetimes as
  float ms since the epoch); the period closes at ``time + 25 ms``, the earliest instant
  all its lines can have been written. **Latency = arrival at the viewer - period close.**
- The **window** is [t0, t1] of the load generator; a row belongs to it when its period
  closes inside. Viewers connect before t0, so backfill (rows of the initial document or
  streamed right after connecting) is never in the window.
- **Expected** rows of a stream are the periods of the window with at least one line in
  the written file; each viewer is expected to get every displayed stream's rows once.
  **Received** counts expected rows that arrived (within the grace after t1), once.
- A viewer's model (ColumnDataSource) is matched to its stream by comparing its rows'
  values with each file's period max; duplicates and out-of-order rows are counted per
  viewer per model over everything it received.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd

from .common import percentiles
from .data import PERIOD_MS, periods

MATCH_ROWS = 200


def load_rows(path: Path) -> tuple[dict, dict[int, dict[str, dict[str, np.ndarray]]]]:
    z = np.load(path)
    meta = json.loads(bytes(z["meta"]))
    viewers: dict[int, dict[str, dict[str, np.ndarray]]] = defaultdict(lambda: defaultdict(dict))
    for key in z.files:
        if key == "meta":
            continue
        v, model, what = key.split(":")
        viewers[int(v[1:])][model][what] = z[key]
    return meta, viewers


def _match(times: np.ndarray, values: np.ndarray, expected: dict[str, pd.Series]) -> str | None:
    """The stream whose period maxima these rows carry, or None."""
    if len(times) == 0:
        return None
    t, v = times[:MATCH_ROWS], values[:MATCH_ROWS]
    best, score = None, 0.0
    for name, exp in expected.items():
        ref = exp.reindex(t).to_numpy()
        hits = np.isclose(ref, v, rtol=0, atol=1e-9).sum()
        frac = hits / max(np.isfinite(ref).sum(), 1)
        if frac > score:
            best, score = name, frac
    return best if score >= 0.5 else None


def _publish_split(
    rows: dict[str, tuple[np.ndarray, np.ndarray]], events: list[dict]
) -> dict[str, list[float | None]]:
    """Latency split at the loop's publish instant: close -> published -> arrival.

    ``rows``: per stream, the (time ms, arrival s) of received window rows; each row is
    matched to the frame whose [first, last] holds its time.
    """
    before, after = [], []
    by_stream: dict[str, list[dict]] = defaultdict(list)
    for e in events:
        by_stream[e["stream"]].append(e)
    for stream, (t, a) in rows.items():
        evs = sorted(by_stream.get(stream, []), key=lambda e: e["first"])
        if not evs or not len(t):
            continue
        first = np.array([e["first"] for e in evs], dtype=float) / 1e6
        last = np.array([e["last"] for e in evs], dtype=float) / 1e6
        published = np.array([e["published"] for e in evs])
        i = np.searchsorted(first, t, side="right") - 1
        hit = (i >= 0) & (t <= last[np.clip(i, 0, None)])
        pub = published[i[hit]]
        before.append(pub - (t[hit] + PERIOD_MS) / 1000)
        after.append(a[hit] - pub)
    b = np.concatenate(before) if before else np.empty(0)
    c = np.concatenate(after) if after else np.empty(0)
    return dict(close_to_published=percentiles(b), published_to_arrival=percentiles(c))


def analyze(rows_path: Path, files: dict[str, Path], events: list[dict] | None = None) -> dict:
    meta, viewers = load_rows(rows_path)
    t0, t1 = meta["t0"], meta["t1"]
    expected = {s: periods(p, t0, t1) for s, p in files.items()}
    union = pd.concat(expected.values()).groupby(level=0).max()

    latencies: list[np.ndarray] = []
    by_stream: dict[str, list[tuple[np.ndarray, np.ndarray]]] = defaultdict(list)
    dups = ooo = unmatched = extra = backfill = 0
    got: dict[tuple[int, str], set] = defaultdict(set)
    shown: set[str] = set()
    for v, models in viewers.items():
        first_arrival: dict[str, dict[float, float]] = defaultdict(dict)
        for model, cols in models.items():
            times, values, arrival = cols["time"], cols["value"], cols["arrival"]
            uniq, first_idx = np.unique(times, return_index=True)
            dups += len(times) - len(uniq)
            tf = times[np.sort(first_idx)]
            if len(tf) > 1:
                ooo += int((tf[1:] < np.maximum.accumulate(tf)[:-1]).sum())
            close = (times + PERIOD_MS) / 1000
            inwin = (close >= t0) & (close <= t1)
            # Streamed after connecting but closed before: backfill sent as a stream.
            backfill += int((close < meta["open_times"][v]).sum())
            stream = _match(times[inwin], values[inwin], expected)
            if stream is None:
                unmatched += 1
                stream = f"?{model}"  # its own series, judged against any stream's periods
            shown.add(stream)
            seen = first_arrival[stream]
            for t, a in zip(times[inwin].tolist(), arrival[inwin].tolist(), strict=True):
                if t not in seen:
                    seen[t] = a
        for stream, seen in first_arrival.items():
            if not seen:
                continue
            t = np.fromiter(seen.keys(), float, len(seen))
            a = np.fromiter(seen.values(), float, len(seen))
            latencies.append(a - (t + PERIOD_MS) / 1000)
            by_stream[stream].append((t, a))
            exp = expected.get(stream, union)
            hit = np.isin(t, exp.index.to_numpy())
            extra += int((~hit).sum())
            got[(v, stream)] = set(t[hit].tolist())

    # Every connected viewer should have every stream any viewer was shown.
    n_viewers = meta["connected"]
    per_stream = {s: len(expected.get(s, union)) for s in shown}
    per_viewer = sum(per_stream.values())
    expected_rows = n_viewers * per_viewer
    viewer_ratio = {
        v: sum(len(got.get((v, s), ())) for s in shown) / per_viewer if per_viewer else 0.0
        for v, opened in enumerate(meta["open_times"])
        if opened is not None  # connected, whether or not it received anything
    }
    received = sum(len(s) for s in got.values())
    lat = np.concatenate(latencies) if latencies else np.empty(0)
    p50, p95, p99 = percentiles(lat)
    split = {}
    if events is not None:
        rows = {
            s: (np.concatenate([t for t, _ in ps]), np.concatenate([a for _, a in ps]))
            for s, ps in by_stream.items()
        }
        split = _publish_split(rows, events)
    return dict(
        viewers=meta["viewers"],
        connected=n_viewers,
        failed=meta["failed"],
        errors=meta["errors"],
        dropped=meta["dropped"],
        window_s=round(t1 - t0, 2),
        streams_shown=sorted(shown),
        latency_p50=p50,
        latency_p95=p95,
        latency_p99=p99,
        latency_max=float(lat.max()) if lat.size else None,
        rows_expected=expected_rows,
        rows_received=received,
        rows_ratio=received / expected_rows if expected_rows else 0.0,
        rows_extra=extra,
        rows_streamed_backfill=backfill,
        initial_document_kb=round(float(np.mean(meta["pulled"])) / 1024, 1)
        if meta.get("pulled")
        else None,
        viewer_ratio=viewer_ratio,
        duplicates=dups,
        out_of_order=ooo,
        unmatched_models=unmatched,
        messages=meta["messages"],
        bytes=meta["bytes"],
        **split,
    )
