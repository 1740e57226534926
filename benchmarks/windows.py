"""Windows: rows per second of each window kind, fed tick by tick, against pandas at once.

``python -m benchmarks.windows [--rows 1000000] [--tick 1000] [--runs 5]``

The data: ``--rows`` rows a millisecond apart with rare spikes, 10 % of them up to
40 ms out of order, in three keys. headrace's windows get it in ticks of ``--tick``
rows, carrying their state from tick to tick (pickled, as the loop stores it), with a
grace period of 50 ms; pandas computes the same windows over the whole frame in one
call, knowing nothing of order or lateness. The figure is the ratio of their
throughputs (median of ``--runs`` runs, both measured side by side in each run): what
streaming, exactly once and with late rows handled, costs over a batch computation.

- tumbling 25 ms, max: ``groupby([key, time.dt.floor("25ms")]).max()``;
- hopping 100 ms every 25 ms, sum: 25 ms sums, then a rolling sum of 4 per key;
- session, gap 5 ms, max: a new session where a key's sorted times jump over 5 ms;
- m4 (max, min, first, last) of 25 ms: ``agg(["max", "min", "first", "last"])``;
- tumbling 25 ms, max, emitting early (each open window's changes as revisions): the
  same pandas call, which gives only final values;
- as-of join within 100 ms, per key, of two streams (the rows alternately, in time
  order): ``pd.merge_asof(left, right, on="time", by="key", tolerance=...)``.
"""

from __future__ import annotations

import argparse
import pickle
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd

from headrace.etl.windows import AsofJoin, Hopping, Session, Tumbling

from . import common


def data(n: int, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2026-12-04", tz="UTC").value
    times = start + np.arange(n) * 1_000_000
    late = rng.random(n) < 0.1
    times[late] -= rng.integers(0, 40_000_000, late.sum())
    values = rng.normal(0, 1, n)
    values[rng.random(n) < 0.001] = 50.0
    return pd.DataFrame(
        {
            "time": pd.array(times.view("M8[ns]"), pd.DatetimeTZDtype("ns", "UTC")),
            "value": values,
            "key": pd.Series(rng.choice(["a", "b", "c"], n), dtype="str"),
        }
    )


def streamed(window, rows: pd.DataFrame, tick: int) -> float:
    """Seconds to feed ``rows`` tick by tick."""
    carry, started = None, time.perf_counter()
    for at in range(0, len(rows), tick):
        step = window.step(rows.iloc[at : at + tick], carry)
        carry = pickle.loads(pickle.dumps(step.carry))
    return time.perf_counter() - started


def _tumbling(rows):
    return rows.groupby(["key", rows["time"].dt.floor("25ms")])["value"].max()


def _hopping(rows):
    sums = rows.groupby(["key", rows["time"].dt.floor("25ms")])["value"].sum()
    return sums.groupby(level=0).rolling(4, min_periods=1).sum()


def _session(rows):
    ordered = rows.sort_values(["key", "time"])
    jump = ordered.groupby("key")["time"].diff().gt(pd.Timedelta("5ms")).cumsum()
    return ordered.groupby(["key", jump])["value"].max()


def _m4(rows):
    return rows.groupby(["key", rows["time"].dt.floor("25ms")])["value"].agg(
        ["max", "min", "first", "last"]
    )


def _asof(rows):
    left, right = (rows[rows["input"] == name].drop(columns="input") for name in ("cpu", "mem"))
    return pd.merge_asof(
        left, right, on="time", by="key", tolerance=pd.Timedelta("100ms"), suffixes=("", "_mem")
    )


def joined(rows: pd.DataFrame) -> pd.DataFrame:
    """Two streams' rows, alternately, in time order: what a join reads from frames."""
    rows = rows.sort_values("time", kind="stable", ignore_index=True)
    return rows.assign(input=np.where(np.arange(len(rows)) % 2, "mem", "cpu"))


KINDS = {
    "tumbling 25ms max": (lambda: Tumbling("25ms", agg="max", grace="50ms"), _tumbling),
    "hopping 100ms/25ms sum": (lambda: Hopping("100ms", "25ms", agg="sum", grace="50ms"), _hopping),
    "session 5ms max": (lambda: Session("5ms", agg="max", grace="50ms"), _session),
    "m4 25ms": (lambda: Tumbling("25ms", agg="m4", grace="50ms"), _m4),
    "tumbling 25ms max, emit early": (
        lambda: Tumbling("25ms", agg="max", grace="50ms", emit="early"),
        _tumbling,
    ),
    "as-of join 100ms": (lambda: AsofJoin("cpu", "mem", tolerance="100ms", wait="1s"), _asof),
}
JOINS = {"as-of join 100ms"}


def run(rows: int, tick: int, runs: int) -> list[dict]:
    frame = data(rows)
    out = []
    for name, (make, batch) in KINDS.items():
        ratios, ours, theirs = [], [], []
        given = joined(frame) if name in JOINS else frame
        for _ in range(runs):
            a = streamed(make(), given, tick)
            started = time.perf_counter()
            batch(given)
            b = time.perf_counter() - started
            ours.append(rows / a)
            theirs.append(rows / b)
            ratios.append(a / b)
        out.append(
            dict(
                kind=name,
                rows=rows,
                tick=tick,
                headrace_rows_per_s=round(statistics.median(ours)),
                pandas_rows_per_s=round(statistics.median(theirs)),
                slower_than_pandas=round(statistics.median(ratios), 2),
            )
        )
    return out


def table(results: list[dict]) -> str:
    rows = [
        "| window or join | headrace, ticks of N rows (rows/s) | pandas, all at once (rows/s) "
        "| headrace time / pandas time |",
        "|---|---|---|---|",
    ]
    for r in results:
        rows.append(
            f"| {r['kind']} | {r['headrace_rows_per_s']:,} (N={r['tick']}) "
            f"| {r['pandas_rows_per_s']:,} | {r['slower_than_pandas']:g} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.windows", description=__doc__)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--tick", type=int, default=1000)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--doc", default=None, help="markdown file for the table (overwritten)")
    args = p.parse_args(argv)
    results = run(args.rows, args.tick, args.runs)
    print(table(results))
    if args.doc:
        common.write_doc(Path(args.doc), "Windows", "windows", [("", results)], table, argv)


if __name__ == "__main__":
    main()
