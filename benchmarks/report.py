"""The markdown tables printed at the end of a run (the JSON has every figure)."""

from __future__ import annotations

from .fanout_report import fanout_targets, joins_table, per_viewer_ms
from .tables import f as _f
from .tables import ms as _ms
from .tables import role as _role
from .tables import table as _table
from .tables import yes as _yes

TICK = 0.2


def _machine(phase: dict) -> str:
    m = phase.get("machine")
    if not m:
        return "-"
    return f"{m['busy_per_s']:.2f} ({m['untracked_per_s']:.2f}) of {m['cores']}"


def _split(phase: dict) -> str:
    a, b = phase.get("close_to_published"), phase.get("published_to_arrival")
    if not a or not b:
        return "-"
    return f"{_ms(a[0])}/{_ms(a[1])}, {_ms(b[0])}/{_ms(b[1])}"


def load_table(sweeps: list[dict]) -> list[str]:
    header = [
        "system",
        "N",
        "sessions/proc",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "p50/p95 close→published, published→viewer ms",
        "rows recv/exp",
        "initial doc KB",
        "dup",
        "ooo",
        "FTP xfer/s",
        "panel CPU s/s / peak MB",
        "panel CPU ms per viewer-s",
        "loop",
        "scheduler",
        "workers",
        "ftp+writer",
        "loadgen",
        "machine busy (others) s/s",
    ]
    rows = []
    for sw in sweeps:
        for p in sw["phases"]:
            if "error" in p:
                rows.append(
                    [sw["system"], str(p["n"]), f"error: {p['error'][:80]}"]
                    + [""] * (len(header) - 3)
                )
                continue
            spp = "/".join(str(v) for v in sorted(p.get("sessions_per_process", {}).values()))
            failed = f" ({p['failed']} failed)" if p.get("failed") else ""
            rows.append(
                [
                    sw["system"],
                    f"{p['n']}{failed}",
                    spp or "-",
                    _ms(p["latency_p50"]),
                    _ms(p["latency_p95"]),
                    _ms(p["latency_p99"]),
                    _split(p),
                    f"{p['rows_received']}/{p['rows_expected']} ({p['rows_ratio']:.1%})",
                    _f(p.get("initial_document_kb"), ".0f"),
                    str(p["duplicates"]),
                    str(p["out_of_order"]),
                    _f(p.get("ftp_transfers_per_s"), ".1f"),
                    _role(p, "panel"),
                    _f(per_viewer_ms(p), ".2f"),
                    _role(p, "loop"),
                    _role(p, "scheduler"),
                    _role(p, "workers"),
                    _role(p, "ftp"),
                    _role(p, "loadgen"),
                    _machine(p),
                ]
            )
        if sw.get("skipped"):
            rows.append(
                [
                    sw["system"],
                    ",".join(map(str, sw["skipped"])),
                    "skipped: overloaded at a smaller N",
                ]
                + [""] * (len(header) - 3)
            )
    lines = [
        "## Viewer load",
        "",
        "Latency: arrival at the viewer - close of the row's 25 ms period. CPU in "
        "seconds per second over the window (sum over the role's processes), "
        "peak RSS in MB.",
        "",
    ]
    return lines + _table(header, rows)


def capacity_table(sweeps: list[dict]) -> list[str]:
    peer = max((sw["capacity"] for sw in sweeps if sw["system"].startswith("peer")), default=None)
    rows = []
    for sw in sweeps:
        cap = sw["capacity"]
        tested = [p["n"] for p in sw["phases"] if "error" not in p]
        note = "" if not tested or cap < max(tested) else " (every N tested)"
        ratio = "-"
        if peer and not sw["system"].startswith("peer"):
            ratio = f"{cap / peer:.1f}x"
        rows.append([sw["system"], f"{cap}{note}", ratio])
    return [
        "## Capacity",
        "",
        "Largest N of the sweep with p95 < 1 s and >= 99 % of the rows.",
        "",
        *_table(["system", "capacity (viewers)", "vs best peer"], rows),
    ]


def parser_table(r: dict) -> list[str]:
    rows = []
    for name in ("headrace", "pandas", "headrace_parse_only", "pandas_parse_only"):
        m = r.get(name, {})
        if "error" in m:
            rows.append([name, m["error"][:80], "", ""])
        elif m:
            rows.append(
                [
                    name,
                    f"{m['lines_per_s_per_core'] / 1e6:.2f}",
                    f"{m['cpu_s']:.3f}",
                    f"{m['rows']:,}",
                ]
            )
    lines = [f"## Parser throughput ({r['lines']:,} demo lines, median of {r['repeats']})", ""]
    lines += _table(["parse + 25 ms max", "M lines/s/core", "CPU s", "rows out"], rows)
    lines += [
        "",
        f"headrace / pandas: **{_f(r.get('ratio'))}x** (parse and resample), "
        f"{_f(r.get('ratio_parse_only'))}x (parse only)",
    ]
    return lines


def hv_table(r: dict) -> list[str]:
    if "error" in r:
        return ["## Live views: cost per session", "", r["error"]]
    opens = r.get("open_ms", {})
    header = [
        "app",
        "ms CPU per tick per session",
        "vs raw",
        "bytes, messages per tick per session",
        "ms CPU per open",
    ]

    def traffic(app: str) -> str:
        b, m = r.get("bytes_per_tick", {}).get(app), r.get("messages_per_tick", {}).get(app)
        return "-" if b is None or m is None else f"{b:,.0f} B, {m:g}"

    rows = [
        [
            "user's 3-glyph live.view overlay",
            f"{r['view_ms']:.3f}",
            f"{r['view_vs_raw']:.2f}x",
            traffic("view"),
            _f(opens.get("view"), ".0f"),
        ],
        [
            "raw Bokeh figure, cds.stream per session",
            f"{r['raw_ms']:.3f}",
            "1.00x",
            traffic("raw"),
            "-",
        ],
        ["headrace dashboard", "-", "-", "-", _f(opens.get("dashboard"), ".0f")],
    ]
    return [
        f"## Live views: cost per session ({r['sessions']} sessions, {r['ticks']} ticks of "
        f"{r['rows']} rows, median of {r['repeats']})",
        "",
        *_table(header, rows),
        "",
        f"Server-thread CPU in one Panel process. The view's function ran "
        f"{r['derived_calls']} times in {r['ticks']} ticks (once per tick for the process); "
        f"{r.get('encodes_per_tick', 0):g} encodings per tick for {r['sessions']} sessions.",
    ]


def cluster_table(r: dict) -> list[str]:
    if "error" in r:
        return ["## Cost of the cluster", "", r["error"]]
    rows = []
    for name in (
        "submit_to_published",
        "extract_transform",
        "publish_notify",
        "published_to_fetched",
        "total",
    ):
        m = r[name]
        rows.append([name.replace("_", " "), _f(m["median_ms"], ".1f"), _f(m["p99_ms"], ".1f")])
    return [
        f"## Cost of the cluster ({r['measured']} ticks)",
        "",
        *_table(["part of a tick", "median ms", "p99 ms"], rows),
    ]


def history_table(r: dict) -> list[str]:
    if "windows" not in r:
        return [f"history: {r.get('error', 'not run')}"]
    rows = [
        [name, _f(w["ms"], ".1f"), str(w["points"]), w["level"], _f(w["max"], ".3f")]
        for name, w in r["windows"].items()
    ]
    out = [
        f"## History reads ({r['days']} days in SQLite, 2,000 points, median of {r['repeats']})",
        "",
        *_table(["window", "ms", "points", "table read", "max value (spikes kept)"], rows),
        "",
    ]
    w = r["write"]
    out.append(
        f"Sink writes: {w['frames_per_s']:,.0f} frames/s of 8 rows with rollups "
        f"({w['frames']:,} frames in {w['seconds']:.1f} s)."
    )
    return out


def targets(results: dict) -> list[str]:
    rows = []
    sweeps = {sw["system"]: sw for sw in results.get("load", [])}
    head = sweeps.get("headrace")
    if head:
        at100 = next((p for p in head["phases"] if p["n"] == 100 and "error" not in p), None)
        goal = TICK + 0.25
        if at100:
            p95 = at100["latency_p95"]
            measured, met = (
                f"{_ms(p95)} ms (goal {goal * 1000:.0f})",
                p95 is not None and p95 <= goal,
            )
        else:
            tested = [p["n"] for p in head["phases"] if "error" not in p]
            measured = f"not run: the sweep stopped at N={max(tested, default=0)}"
            met = False
        rows.append(["p95 <= tick + 250 ms at 100 viewers, 3 Panel procs", measured, _yes(met)])
        cap = head["capacity"]
        rows.append(["capacity >= 200 viewers with p95 < 1 s", str(cap), _yes(cap >= 200)])
        peers = [sw["capacity"] for name, sw in sweeps.items() if name.startswith("peer")]
        if peers:
            best = max(peers)
            rows.append(
                [
                    "capacity >= 5x the per-session pattern's",
                    f"{cap} vs {best}",
                    _yes(cap >= 5 * best),
                ]
            )
        rates = [p["ftp_transfers_per_s"] for p in head["phases"] if "ftp_transfers_per_s" in p]
        if rates:
            spread = (max(rates) - min(rates)) / max(sum(rates) / len(rates), 1e-9)
            rows.append(
                [
                    "FTP transfers/s independent of N",
                    f"{min(rates):.1f}-{max(rates):.1f}/s over N (spread {spread:.0%})",
                    _yes(spread <= 0.1),
                ]
            )
    parser = results.get("parser", {})
    if parser.get("ratio_parse_only") is not None:
        # The target is the parser's; with the 25 ms resample on both sides, see the section.
        parse = parser["ratio_parse_only"]
        rows.append(
            [
                "parser >= 3x pandas.read_csv + to_datetime",
                f"{parse:.2f}x ({_f(parser.get('ratio'))}x with the resample on both sides)",
                _yes(parse >= 3),
            ]
        )
    hv = results.get("hv", {})
    if "view_vs_raw" in hv:
        rows.append(
            [
                "3-glyph live view per session <= 1.1x raw cds.stream",
                f"{hv['view_vs_raw']:.2f}x ({hv['view_ms']:.3f} vs {hv['raw_ms']:.3f} ms per tick)",
                _yes(hv["view_vs_raw"] <= 1.1),
            ]
        )
        rows.append(
            [
                "derived series computed once per process per tick",
                f"{hv['derived_calls']} calls in {hv['ticks']} ticks, {hv['sessions']} sessions",
                _yes(hv["derived_calls"] == hv["ticks"]),
            ]
        )
        opens = hv.get("open_ms", {})
        if opens.get("view") is not None and opens.get("dashboard") is not None:
            rows.append(
                [
                    "a user's app session opens for no more than a dashboard's",
                    f"{opens['view']:.0f} vs {opens['dashboard']:.0f} ms CPU",
                    _yes(opens["view"] <= opens["dashboard"]),
                ]
            )
    rows += fanout_targets(results)
    return ["## Targets", "", *_table(["target", "measured", "met"], rows)]


def markdown(results: dict) -> str:
    parts: list[list[str]] = []
    if results.get("load"):
        parts += [load_table(results["load"]), capacity_table(results["load"])]
    if "joins" in results:
        parts.append(joins_table(results["joins"]))
    if "parser" in results:
        parts.append(parser_table(results["parser"]))
    if "hv" in results:
        parts.append(hv_table(results["hv"]))
    if "history" in results:
        parts.append(history_table(results["history"]))
    if "cluster" in results:
        parts.append(cluster_table(results["cluster"]))
    parts.append(targets(results))
    return "\n\n".join("\n".join(p) for p in parts) + "\n"


def document(text: str, results: dict, command: str) -> str:
    """``text`` as the file under docs/ that every run overwrites: what made it, when, where."""
    m = results["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items())
    return (
        "# Benchmark results\n\n"
        "<!-- Written by the benchmarks (benchmarks/report.py); the next run overwrites it. -->\n\n"
        f"`{command}`, started {results['started']}, {results['wall_s']:.0f} s, on "
        f"{m['platform']} ({m['cpus']} CPUs, {m['memory_gb']} GB), Python {m['python']}; "
        f"{versions}. What each figure means: [benchmarks.md](../benchmarks.md).\n\n" + text
    )
