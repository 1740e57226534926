"""Issue 9's part of the report: viewers joining, CPU per viewer, the fan-out targets."""

from __future__ import annotations

from .loadgen import PHASES
from .tables import f as _f
from .tables import ms as _ms
from .tables import role as _role
from .tables import table as _table
from .tables import yes as _yes


def per_viewer_ms(phase: dict) -> float | None:
    """Panel processes' CPU per viewer per second of the window, in ms."""
    panel = phase.get("roles", {}).get("panel")
    return panel["cpu_per_s"] * 1000 / phase["n"] if panel and phase.get("n") else None


def joins_table(r: dict) -> list[str]:
    rows = []
    for name, what in (
        ("idle", "1 watcher; joiners 1 s apart"),
        (
            "storm",
            f"{r['watchers']} watchers; {r['joiners']} joiners within {r['joiners'] * 0.02:.1f} s"
            + (
                f" ({r['storm']['prepared_sessions']:.0f} sessions built ahead)"
                if r["storm"].get("prepared_sessions") is not None
                else ""
            ),
        ),
    ):
        p = r[name]
        rows.append(
            [
                name,
                what,
                f"{p['joined']} ({p['join_failed']} failed)",
                f"{_ms(p['first_row_p50'])}/{_ms(p['first_row_p95'])}/{_ms(p['first_row_max'])}",
                f"{_ms(p.get('latency_p50'))}/{_ms(p.get('latency_p95'))}",
                _role(p, "panel"),
            ]
        )
    header = [
        "scenario",
        "viewers",
        "joined",
        "joiners' first live row p50/p95/max ms",
        "watchers' p50/p95 ms (whole window)",
        "panel CPU s/s / peak MB",
    ]
    steps = [
        [name, *(_steps_cell(r[name].get("steps", {}).get(step)) for step in PHASES)]
        for name in ("idle", "storm")
    ]
    return [
        "## Viewers joining",
        "",
        *_table(header, rows),
        "",
        "Where a joiner's time goes: ms from its GET to each step, p50/p95 (got: the page;",
        "upgraded: the websocket; ack: Bokeh's ACK, the session made or adopted; doc: the",
        "PULL-DOC reply in; first: its first live row).",
        "",
        *_table(["scenario", *PHASES], steps),
    ]


def _steps_cell(step: list | None) -> str:
    return f"{_ms(step[0])}/{_ms(step[1])}" if step else "-"


def fanout_targets(results: dict) -> list[list[str]]:
    """Issue 9's targets: capacity, p95 at 200, a join storm, idle first row, CPU per viewer."""
    rows = []
    head = next((sw for sw in results.get("load", []) if sw["system"] == "headrace"), None)
    if head:
        ran = [p for p in head["phases"] if "error" not in p]
        rows.append(
            [
                "steady capacity (p95 < 1 s) >= 1,000 viewers",
                str(head["capacity"]),
                _yes(head["capacity"] >= 1000),
            ]
        )
        at200 = next((p for p in ran if p["n"] == 200), None)
        if at200:
            p95 = at200["latency_p95"]
            rows.append(
                [
                    "steady p95 <= 300 ms at 200 viewers",
                    f"{_ms(p95)} ms",
                    _yes(p95 is not None and p95 <= 0.3),
                ]
            )
        if ran:
            top = max(ran, key=lambda p: p["n"])
            cpu = per_viewer_ms(top)
            rows.append(
                [
                    f"Panel CPU per viewer <= 1 ms/s (at N={top['n']})",
                    f"{_f(cpu)} ms/s",
                    _yes(cpu is not None and cpu <= 1),
                ]
            )
    joins = results.get("joins")
    if joins:
        idle, storm = joins["idle"]["first_row_p95"], joins["storm"]
        rows.append(
            [
                "idle first live row <= 300 ms (p95)",
                f"{_ms(idle)} ms",
                _yes(idle is not None and idle <= 0.3),
            ]
        )
        p95, first, n = storm.get("latency_p95"), storm["first_row_p95"], joins["joiners"]
        rows.append(
            [
                f"{n} joining in {n * 0.02:.1f} s: watchers' p95 < 1 s",
                f"{_ms(p95)} ms",
                _yes(p95 is not None and p95 < 1),
            ]
        )
        rows.append(
            [
                "... and joiners' first live row p95 <= 1.5 s",
                f"{_ms(first)} ms",
                _yes(first is not None and first <= 1.5),
            ]
        )
    return rows
