"""Names and judgements operators rely on: the Grafana dashboard asks only for figures
headrace exports, named by Prometheus conventions; health records judged as
`headrace status` and the operator page judge them."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

from prometheus_client import generate_latest

from headrace.app import metrics as panel_metrics
from headrace.etl.contract.health import (
    FAILING,
    OK,
    STALE,
    UNREACHABLE,
    HealthRecord,
    exit_code,
    statuses,
)
from headrace.etl.loop.metrics import LoopMetrics

DASHBOARD = Path(__file__).resolve().parent.parent / "cluster" / "grafana" / "headrace.json"
# The sample names of a family (its ``# TYPE`` line names counters with their _total).
SUFFIXES = {"counter": [""], "histogram": ["_bucket", "_count", "_sum"], "gauge": [""]}


def exported() -> dict[str, str]:
    """``{sample name: type}`` of everything the loop and a Panel process export."""
    loop = LoopMetrics()
    loop.backlog = lambda: (0, 0)
    loop.lease = SimpleNamespace(held=True, takeovers=0)  # a loop's lease: active or waiting
    text = (generate_latest(loop.registry) + generate_latest(panel_metrics.REGISTRY)).decode()
    # (prometheus_client adds a `_created` gauge per counter and histogram once it has
    # samples: a timestamp, not a figure anyone charts)
    types = {
        name: kind
        for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M)
        if not name.endswith("_created")
    }
    return {base + sfx: kind for base, kind in types.items() for sfx in SUFFIXES[kind]}


def test_grafana_dashboard_uses_only_exported_figures():
    names = exported()
    exprs = [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"]]
    used = {n for e in exprs for n in re.findall(r"headrace_[a-z_]+", e)}
    assert used and used <= set(names), sorted(used - set(names))
    # Every family the loop and the Panel processes export has a panel.
    bases = {re.sub(r"_(total|bucket|count|sum)$", "", n) for n in names}
    shown = {re.sub(r"_(total|bucket|count|sum)$", "", n) for n in used}
    assert bases <= shown, sorted(bases - shown)


def test_names_follow_prometheus_conventions():
    for name, kind in exported().items():
        assert name.startswith("headrace_"), name
        if kind == "histogram":
            assert re.search(r"_seconds_(bucket|count|sum)$", name), name
        if kind == "counter":
            assert name.endswith("_total"), name


def record(**fields) -> HealthRecord:
    base = {"reported": 1000.0, "last_published": 999.0, "published": 7, "failures": 0}
    return HealthRecord.from_message({**base, **fields})  # the stream: its key in statuses


def test_health_records_are_judged_ok_stale_or_failing():
    found = statuses(
        {
            "fine": record(),
            "quiet": record(last_published=900.0),
            "never": record(last_published=0.0, published=0),
            "gone": record(reported=950.0),
            "bad": record(failures=3, error="SourceError: no such file", error_since=990.0),
        },
        stale_after=30,
        now=1000.0,
    )
    states = {s.stream: (s.state, s.reason) for s in found}
    assert states["fine"] == ("ok", "")
    assert states["quiet"][0] == states["never"][0] == "stale"
    assert states["gone"] == ("stale", "the loop has not reported for 50 s")
    assert states["bad"] == ("failing", "3 failed ticks for 10 s: SourceError: no such file")
    assert exit_code(found) == FAILING
    assert exit_code([s for s in found if s.state != "failing"]) == STALE
    assert exit_code([s for s in found if s.state == "ok"]) == OK
    assert exit_code([]) == UNREACHABLE
