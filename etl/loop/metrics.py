"""Prometheus figures of the tick loop, per stream: ``headrace etl --metrics-port``.

The counters are the streams' health totals (:class:`headrace.etl.loop.runner.Health`), read when
scraped: they are kept with each stream's checkpoint, so a restart of the loop does not
reset them and a tick replayed after a crash counts once. Durations are histograms
observed as ticks end. Dask's scheduler serves its own figures on its dashboard port.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from headrace.etl.contract.health import Counted
    from headrace.etl.store.lease import Lease

# Health counter -> (metric name without _total, help).
COUNTERS = {
    "ticks": ("headrace_ticks", "Ticks run, all time."),
    "overruns": ("headrace_tick_overruns", "Ticks that took longer than the stream's interval."),
    "lines": ("headrace_lines", "Complete non-blank lines read from the source."),
    "blank": ("headrace_blank_lines", "Whitespace-only lines read from the source and skipped."),
    "rows": ("headrace_rows", "Rows published."),
    "malformed": ("headrace_malformed_lines", "Lines that did not parse."),
    "late": ("headrace_late_rows", "Rows dropped because their period was already published."),
    "bytes": ("headrace_read_bytes", "Bytes of complete lines read from the source."),
    "transfers": ("headrace_source_transfers", "Transfers from the source (an FTP RETR each)."),
}
TICK_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
LAG_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0)


class LoopMetrics:
    """The loop's registry: set :attr:`healths` (``run_streams`` does) and :meth:`serve` it."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # Each stream's name and health record, read at every scrape.
        self.healths: Callable[[], list[tuple[str, Counted]]] = list
        self.backlog: Callable[[], tuple[int, int]] | None = None  # the sink's (frames, bytes)
        self.lease: Lease | None = None  # this loop's: active or waiting, takeovers
        self.tick_seconds = Histogram(
            "headrace_tick_duration_seconds",
            "Time a tick takes, extract to commit.",
            ["stream"],
            buckets=TICK_BUCKETS,
            registry=self.registry,
        )
        self.publish_lag = Histogram(
            "headrace_publish_lag_seconds",
            "From the close of a frame's newest period to its publication.",
            ["stream"],
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_HealthCollector(self))

    def ticked(self, stream: str, seconds: float) -> None:
        self.tick_seconds.labels(stream).observe(seconds)

    def published(self, stream: str, lag: float) -> None:
        self.publish_lag.labels(stream).observe(max(0.0, lag))

    def serve(self, port: int, address: str = "127.0.0.1") -> Any:
        """Serve ``/metrics`` on ``address:port`` (a daemon thread); returns the server."""
        server, _thread = start_http_server(port, addr=address, registry=self.registry)
        return server


class _HealthCollector(Collector):
    def __init__(self, metrics: LoopMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        healths = self.metrics.healths()
        counters = {
            key: CounterMetricFamily(name, help_, labels=["stream"])
            for key, (name, help_) in COUNTERS.items()
        }
        failures = GaugeMetricFamily(
            "headrace_consecutive_failures",
            "Failed ticks in a row (0: healthy).",
            labels=["stream"],
        )
        seq = GaugeMetricFamily(
            "headrace_last_published_seq", "Sequence number last published.", labels=["stream"]
        )
        when = GaugeMetricFamily(
            "headrace_last_published_timestamp_seconds",
            "Unix time of the last publication.",
            labels=["stream"],
        )
        for stream, h in healths:
            name, totals = [stream], h.totals()
            for key, family in counters.items():
                family.add_metric(name, totals[key])
            failures.add_metric(name, h.failures)
            seq.add_metric(name, h.published)
            when.add_metric(name, h.last_published)
        yield from counters.values()
        yield from (failures, seq, when)
        lease = self.metrics.lease
        if lease is not None:
            yield GaugeMetricFamily(
                "headrace_loop_active",
                "1 while this loop holds the lease and ticks, 0 while it waits to take over.",
                int(lease.held),
            )
            yield CounterMetricFamily(
                "headrace_lease_takeovers",
                "Leases this loop took from another loop (stopped, dead or silent).",
                lease.takeovers,
            )
        if self.metrics.backlog is not None:
            frames, size = self.metrics.backlog()
            yield GaugeMetricFamily(
                "headrace_sink_backlog_frames", "Frames waiting for the history sink.", frames
            )
            yield GaugeMetricFamily(
                "headrace_sink_backlog_bytes", "Bytes waiting for the history sink.", size
            )
