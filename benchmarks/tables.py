"""Formatting shared by the report's tables: milliseconds, numbers, markdown rows."""

from __future__ import annotations


def ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1000:.0f}"


def f(x: float | None, fmt: str = ".2f") -> str:
    return "-" if x is None else format(x, fmt)


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return out + ["| " + " | ".join(r) + " |" for r in rows]


def role(phase: dict, role: str) -> str:
    r = phase.get("roles", {}).get(role)
    if not r:
        return "-"
    if r["n"] > 1:
        return f"{r['cpu_per_s']:.2f} ({r['n']}p, max {r['cpu_max']:.2f}) / {r['rss_peak_mb']:.0f}"
    return f"{r['cpu_per_s']:.2f} / {r['rss_peak_mb']:.0f}"


def yes(ok: bool) -> str:
    return "yes" if ok else "**no**"
