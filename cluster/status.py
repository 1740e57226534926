"""``headrace status``: one line per stream from the loop's health records on the scheduler.

The exit status is for cron and monitoring agents: 0 when every stream is healthy, 1 when
one is stale (no publication for ``stale_after`` seconds, or the loop stopped reporting),
2 when one is failing (its last tick raised), 3 when the scheduler cannot be reached or
no stream has reported.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from headrace.etl import contract
from headrace.etl.contract.health import UNREACHABLE, HealthRecord, exit_code, statuses
from headrace.etl.contract.loops import LoopRecord, loop_records
from headrace.etl.store.database import StateSpec
from headrace.etl.store.deadletter import FILENAME, DeadLetterStore


def read_records(
    scheduler: str, timeout: float = 5.0
) -> tuple[dict[str, HealthRecord], list[LoopRecord]]:
    """The health records and the loops' records on ``scheduler``; OSError/TimeoutError if it
    cannot be reached."""
    from distributed import Client

    with Client(scheduler, timeout=timeout, set_as_default=False) as client:
        return contract.health_records(client), client.sync(loop_records, client)


def report(
    scheduler: str,
    stale_after: float,
    as_json: bool,
    timeout: float = 5.0,
    only: Sequence[str] = (),
) -> tuple[str, int]:
    """The text (or JSON) ``headrace status`` prints, and its exit status.

    ``only``: the streams to judge (default all that reported).
    """
    try:
        records, loops = read_records(scheduler, timeout)
        if only:
            records = {s: r for s, r in records.items() if s in only}
    except (OSError, TimeoutError) as exc:
        text = f"headrace status: cannot reach the Dask scheduler at {scheduler}: {exc}"
        if as_json:
            text = json.dumps({"scheduler": scheduler, "error": str(exc), "streams": []})
        return text, UNREACHABLE
    found = statuses(records, stale_after)
    code = exit_code(found)
    if as_json:
        everything = {
            "scheduler": scheduler,
            "loops": [{**asdict(p), "gone": p.gone()} for p in loops],
            "streams": [asdict(s) for s in found],
        }
        return json.dumps(everything), code
    said = [p.line() for p in loops]
    if not found:
        return "\n".join([*said, f"headrace status: no stream has reported on {scheduler}"]), code
    return "\n".join([*said, *(s.line() for s in found)]), code


def malformed(
    state_dir: str | Path,
    stream: str,
    limit: int,
    as_json: bool,
    database: StateSpec | None = None,
) -> tuple[str, int]:
    """The newest dead letters of ``stream`` in the loop's state (directory or database)."""
    path = Path(state_dir)
    if database is None and not (path / FILENAME).exists():
        return f"headrace status: no dead-letter store in {path}", UNREACHABLE
    store = DeadLetterStore(path, database=database)
    try:
        letters, total = store.recent(stream, limit), store.count(stream)
    finally:
        store.close()
    if as_json:
        return json.dumps(
            {"stream": stream, "kept": total, "lines": [asdict(d) for d in letters]}
        ), 0
    head = f"{stream}: {total} malformed lines kept in {store.where}, newest {len(letters)}:"
    return "\n".join([head, *(str(d) for d in letters)]), 0
