"""The reliability table: one row per provoked fault, written as the fault tests run and
printed at the end of the pytest run (``./run test tests/test_faults.py`` gives it alone).

Kept free of Dask imports: conftest reads it (see the note in conftest).
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

REPORT = Path(
    os.environ.get(
        "HEADRACE_FAULT_REPORT", Path(__file__).resolve().parent.parent / ".faults.jsonl"
    )
)
COLUMNS = ("written", "published", "open", "lost", "duplicated")
SUITE = ("test_faults.py", "test_faults_more.py")  # the fault suite proper
# The table of the last run that ran the fault suite, for the docs ("": not written).
DOC = os.environ.get(
    "HEADRACE_FAULT_DOC", str(Path(__file__).resolve().parent.parent / "docs/results/faults.md")
)


def record(fault: str, provoked: str, **figures: object) -> None:
    """One row: the fault, how it was provoked, lines written/published/lost... and timings."""
    with REPORT.open("a") as f:
        f.write(json.dumps({"fault": fault, "provoked": provoked, **figures}) + "\n")


def start() -> None:
    REPORT.unlink(missing_ok=True)


def table() -> str | None:
    """The rows recorded in this run as a Markdown table, or None."""
    if not REPORT.exists():
        return None
    rows = [json.loads(line) for line in REPORT.read_text().splitlines() if line.strip()]
    if not rows:
        return None
    out = [
        "| fault | provoked | lines written / published / still open | lost | duplicated | "
        "measured |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        timings = ", ".join(
            f"{k.replace('_', ' ')} {v}"
            for k, v in r.items()
            if k not in (*COLUMNS, "fault", "provoked")
        )
        lines = (
            f"{r['written']:,} / {r['published']:,} / {r['open']:,}" if "written" in r else "n/a"
        )
        out.append(
            f"| {r['fault']} | {r['provoked']} | {lines} | {r.get('lost', 'n/a')} | "
            f"{r.get('duplicated', 'n/a')} | {timings} |"
        )
    return "\n".join(out)


def _suite(nodeids: list[str]) -> list[str]:
    return [n for n in nodeids if n.split("::")[0].endswith(SUITE)]


def write_doc(table: str, command: str, passed: list[str], failed: list[str]) -> Path | None:
    """Overwrite :data:`DOC` with ``table`` when the fault suite ran and passed (test ids)."""
    if not DOC or not _suite(passed) or _suite(failed):
        return None
    path = Path(DOC)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "# Fault suite results\n\n"
        "<!-- Written by the test suite (tests/faultreport.py); the next run overwrites it. -->\n\n"
        f"`{command}`, {time.strftime('%Y-%m-%d %H:%M %Z')}, on {platform.platform()} "
        f"({os.cpu_count()} CPUs), Python {platform.python_version()}. What each fault proves: "
        "[reliability.md](../reliability.md).\n\n" + table + "\n"
    )
    return path
