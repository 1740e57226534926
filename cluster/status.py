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
from headrace.etl.store.deadletter import FILENAME, DeadLetterStore


def read_records(scheduler: str, timeout: float = 5.0) -> dict[str, HealthRecord]:
    """The health records on ``scheduler``; OSError/TimeoutError if it cannot be reached."""
    from distributed import Client

    with Client(scheduler, timeout=timeout, set_as_default=False) as client:
        return contract.health_records(client)


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
        records = read_records(scheduler, timeout)
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
        return json.dumps({"scheduler": scheduler, "streams": [asdict(s) for s in found]}), code
    if not found:
        return f"headrace status: no stream has reported on {scheduler}", code
    return "\n".join(s.line() for s in found), code


def malformed(state_dir: str | Path, stream: str, limit: int, as_json: bool) -> tuple[str, int]:
    """The newest dead letters of ``stream`` in the loop's state directory."""
    path = Path(state_dir)
    if not (path / FILENAME).exists():
        return f"headrace status: no dead-letter store in {path}", UNREACHABLE
    store = DeadLetterStore(path)
    try:
        letters, total = store.recent(stream, limit), store.count(stream)
    finally:
        store.close()
    if as_json:
        return json.dumps(
            {"stream": stream, "kept": total, "lines": [asdict(d) for d in letters]}
        ), 0
    head = f"{stream}: {total} malformed lines kept in {path}, newest {len(letters)}:"
    return "\n".join([head, *(str(d) for d in letters)]), 0
