"""Find or start the Dask cluster headrace runs on.

Order: an explicit address, else Dask's own ``DASK_SCHEDULER_ADDRESS`` (the
``scheduler-address`` config key), else an embedded ``LocalCluster`` listening
on 127.0.0.1:8786 with its dashboard on :8787, so that ``dask worker
tcp://127.0.0.1:8786`` can add capacity to it and Panel processes can reach it.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field

from distributed import Client, LocalCluster
from distributed.security import Security

from headrace.cluster.security import tls
from headrace.etl.contract import DEFAULT_SCHEDULER, configured_scheduler

log = logging.getLogger(__name__)

DEFAULT_SCHEDULER_PORT = int(DEFAULT_SCHEDULER.rsplit(":", 1)[1])
DEFAULT_DASHBOARD = "127.0.0.1:8787"


@dataclass
class LocalSpec:
    """How to start the embedded cluster when no scheduler address is given."""

    n_workers: int = 2
    threads_per_worker: int = 1
    processes: bool = True
    scheduler_port: int = DEFAULT_SCHEDULER_PORT
    dashboard_address: str | None = DEFAULT_DASHBOARD
    host: str = "127.0.0.1"
    extra: dict = field(default_factory=dict)

    def kwargs(self) -> dict:
        return dict(
            n_workers=self.n_workers,
            threads_per_worker=self.threads_per_worker,
            processes=self.processes,
            scheduler_port=self.scheduler_port,
            dashboard_address=self.dashboard_address,
            host=self.host,
            **self.extra,
        )


@contextmanager
def _workers_ignore_sigint() -> Iterator[None]:
    """Start worker processes with Ctrl-C ignored: the parent stops them in order instead.

    Ctrl-C reaches every process of the terminal's group; workers that die of it on their
    own spill tracebacks and lose frames the loop is still publishing. An ignored signal
    stays ignored in the spawned children.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@asynccontextmanager
async def connect(
    address: str | None = None, local: LocalSpec | None = None, **client_kwargs
) -> AsyncIterator[Client]:
    """An asynchronous Client on the chosen cluster, closed (with its cluster) on exit."""
    address = configured_scheduler(address)
    if address:
        log.info("connecting to scheduler %s", address)
        async with Client(address, asynchronous=True, **client_kwargs) as client:
            yield client
        return
    spec = local or LocalSpec()
    kwargs = spec.kwargs()
    if (
        tls.encrypted()
    ):  # configured (headrace.cluster.security.tls): the embedded cluster speaks TLS only
        kwargs.setdefault("security", Security())
        kwargs.setdefault("protocol", "tls://")
    with _workers_ignore_sigint():
        cluster = await LocalCluster(asynchronous=True, **kwargs)
    async with cluster:
        log.info(
            "started embedded Dask cluster: scheduler %s, dashboard %s, %d workers",
            cluster.scheduler_address,
            cluster.dashboard_link,
            spec.n_workers,
        )
        async with Client(cluster, asynchronous=True, **client_kwargs) as client:
            yield client
        # Closing our own cluster drops the frames it holds, on purpose: not worth a warning.
        logging.getLogger("distributed.scheduler").setLevel(logging.ERROR)
