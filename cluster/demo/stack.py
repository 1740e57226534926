"""``headrace demo``: the whole system on one machine, stopped as a whole.

An FTP server on 127.0.0.1:2121 serving log files that a writer appends to, an
embedded Dask cluster (scheduler :8786, dashboard :8787), the tick loop, and
``panel serve`` with several processes on :5006.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from distributed import Client

from headrace.cluster import processes
from headrace.cluster.connection import LocalSpec
from headrace.cluster.demo.ftpserver import FTPServer
from headrace.cluster.demo.logwriter import KEYED_PATTERN, LogWriter
from headrace.cluster.panel import serve_command
from headrace.cluster.security.access import Access
from headrace.cluster.security.certs import make_certs
from headrace.cluster.security.tls import TLSFiles, configure
from headrace.cluster.service import serve
from headrace.etl.parse.regex import RegexParser
from headrace.etl.store.sink import SinkSpec
from headrace.etl.streams import Stream
from headrace.etl.transforms import Resample

log = logging.getLogger(__name__)

NAMES = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]


KEYED, PUMPS = "pumps", ["p1", "p2", "p3"]  # the demo's keyed stream and its keys
SPIKES = 0.3  # the demo's values are ~0.1 with rare spikes of +0.5: markers above this


def stream_names(n: int) -> list[str]:
    # Alphabetic names read well in the Dask dashboard (extract-alpha, transform-alpha).
    return NAMES[:n] if n <= len(NAMES) else [f"s{i}" for i in range(n)]


async def demo(
    streams: int = 3,
    rate: float = 40.0,
    interval: float = 0.2,
    ftp_port: int = 2121,
    port: int = 5006,
    num_procs: int = 3,
    scheduler_port: int = 8786,
    dashboard_address: str = "127.0.0.1:8787",
    workdir: str | None = None,
    metrics_port: int = 8790,
    tls: bool = False,
    basic_auth: str | None = None,
) -> None:
    work = Path(workdir or tempfile.mkdtemp(prefix="headrace-demo-"))
    root = work / "ftp"
    root.mkdir(parents=True, exist_ok=True)
    names = stream_names(streams)
    paths = [root / f"{name}.log" for name in names]
    keyed = root / f"{KEYED}.log"  # one file, several series: lines carry a pump's name
    for p in [*paths, keyed]:
        p.touch()
    server = FTPServer(root, port=ftp_port).start()
    writer = LogWriter([*paths, keyed], rate=rate, keys={keyed: PUMPS})
    writer.start()
    defs = [Stream(n, server.url(f"{n}.log"), interval=interval) for n in names]
    defs.append(
        Stream(
            KEYED,
            server.url(f"{KEYED}.log"),
            parser=RegexParser(KEYED_PATTERN),
            transform=Resample("25ms", agg="max"),
            interval=interval,
        )
    )
    panel: list[subprocess.Popen] = []

    history = SinkSpec().defaults(SinkSpec(), work / "state").url  # where the loop writes
    files = None
    if tls:  # certificates for this run: the cluster, the loop and Panel speak tls:// only
        certs = make_certs(work / "tls")
        files = TLSFiles(str(certs.ca), str(certs.cert), str(certs.key))
        configure(files)
    access = Access(port=port, basic_auth=basic_auth, state_dir=work / "state")

    async def start_panel(client: Client) -> None:
        proc = serve_command(
            num_procs,
            client.scheduler.address,
            port,
            wait=False,
            history=history,
            access=access,
            tls=files,
            spikes=SPIKES,
        )
        panel.append(proc)
        tls_args = (
            f" --tls-ca-file {files.ca} --tls-cert {files.cert} --tls-key {files.key}"
            if files
            else ""
        )
        login = (
            "  login:           any user name, the --basic-auth password\n" if basic_auth else ""
        )
        print(
            f"\nheadrace demo is up ({len(names)} streams and {KEYED!r}, keyed, "
            f"at {rate:g} lines/s, files in {root})\n"
            f"  dashboard:       http://localhost:{port}/dashboard\n"
            f"  operator page:   http://localhost:{port}/ops\n"
            f"  metrics:         http://localhost:{port}/metrics (Panel processes), "
            f"http://127.0.0.1:{metrics_port}/metrics (loop)\n"
            f"  status:          headrace status --scheduler {client.scheduler.address}"
            f"{tls_args}\n"
            f"{login}"
            f"  Dask dashboard:  {client.dashboard_link}\n"
            f"  Dask scheduler:  {client.scheduler.address}  (add workers: dask worker "
            f"{client.scheduler.address}{tls_args})\n"
            f"  FTP server:      ftp://127.0.0.1:{server.port}/\n"
            f"  history:         {history}  (every frame, with 1 s to 10 min rollups)\n"
            "Ctrl-C stops everything.\n",
            flush=True,
        )

    local = LocalSpec(scheduler_port=scheduler_port, dashboard_address=dashboard_address)
    try:
        await serve(
            defs,
            scheduler=None,
            state_dir=work / "state",
            cluster=asdict(local),
            on_ready=start_panel,
            metrics=("127.0.0.1", metrics_port),
        )
    finally:
        for proc in panel:
            processes.stop(proc)
        writer.stop()
        server.stop()
        log.info("demo: stopped")


def main(**options: Any) -> None:
    asyncio.run(demo(**options))
