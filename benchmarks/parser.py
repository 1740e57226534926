"""Parser throughput: headrace's RegexParser + Resample against pandas on the same bytes.

Both sides get the same 1 M demo lines (``headrace.cluster.demo.logwriter.format_line``, 40
lines/s as the demo writes them, so about one line per 25 ms period) and produce the same
thing: 25 ms
periods with the max value. pandas: ``read_csv(sep=" ")`` + ``to_datetime(ISO8601)`` +
``resample("25ms").max()``. Arrow is held to one thread, so CPU seconds are one core's;
lines/s per core = lines / CPU seconds of the process. Median of ``repeats`` runs.
"""

from __future__ import annotations

import io
import statistics
import time
from collections.abc import Callable

import numpy as np
import pandas as pd
import pyarrow as pa

from headrace.cluster.demo.logwriter import format_line

from .common import log


def demo_bytes(lines: int, rate: float = 40.0, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    values = np.clip(rng.normal(0.1, 0.01, lines), 0, 1)
    values[rng.random(lines) < 0.002] += (
        0.5  # the rare spikes of headrace.cluster.demo.logwriter.sample_value
    )
    start = time.time() - lines / rate
    return b"".join(format_line(start + i / rate, float(v)) for i, v in enumerate(values))


def _headrace(data: bytes) -> int:
    from headrace.etl.parse.regex import RegexParser
    from headrace.etl.transforms import Resample

    parsed = RegexParser().parse(data)
    step = Resample("25ms", agg="max").step(parsed.frame, None)
    return len(step.frame)


def _headrace_parse(data: bytes) -> int:
    from headrace.etl.parse.regex import RegexParser

    return len(RegexParser().parse(data).frame)


def _pandas_parse(data: bytes) -> pd.DataFrame:
    df = pd.read_csv(io.BytesIO(data), sep=" ", header=None, names=["time", "value"])
    df["time"] = pd.to_datetime(df["time"], format="ISO8601", utc=True)
    return df


def _pandas(data: bytes) -> int:
    df = _pandas_parse(data)
    return len(df.set_index("time")["value"].resample("25ms").max().dropna())


def _measure(fn: Callable[[bytes], int], data: bytes, repeats: int) -> dict:
    # Once on a small piece first: imports and first-call set-up are not throughput.
    fn(data[: data.index(b"\n", 100_000) + 1])
    cpu, wall, out = [], [], 0
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        out = fn(data)
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return dict(cpu_s=statistics.median(cpu), wall_s=statistics.median(wall), rows=out)


def run(lines: int = 1_000_000, repeats: int = 3) -> dict:
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    log(f"parser: formatting {lines:,} demo lines")
    data = demo_bytes(lines)
    result: dict = dict(lines=lines, bytes=len(data), repeats=repeats)
    cases = {
        "headrace": _headrace,
        "pandas": _pandas,
        "headrace_parse_only": _headrace_parse,
        "pandas_parse_only": lambda d: len(_pandas_parse(d)),
    }
    for name, fn in cases.items():
        try:
            m = _measure(fn, data, repeats)
        except Exception as exc:  # e.g. a module of etl missing while it is being written
            result[name] = dict(error=f"{type(exc).__name__}: {exc}"[:300])
            log(f"parser: {name} failed: {exc}")
            continue
        m["lines_per_s_per_core"] = lines / m["cpu_s"]
        result[name] = m
        log(
            f"parser: {name}: {m['lines_per_s_per_core'] / 1e6:.2f} M lines/s/core, "
            f"{m['rows']:,} rows"
        )
    for a, b, key in (
        ("headrace", "pandas", "ratio"),
        ("headrace_parse_only", "pandas_parse_only", "ratio_parse_only"),
    ):
        if "cpu_s" in result.get(a, {}) and "cpu_s" in result.get(b, {}):
            result[key] = result[b]["cpu_s"] / result[a]["cpu_s"]
    return result
