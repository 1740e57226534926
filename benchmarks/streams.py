"""Many streams: the stream-ticks per second the loop sustains, and how late their frames are.

``python -m benchmarks.streams [--streams 10,50,200,1000] [--intervals 0.2,1] [--workers 1,2,4]
[--rate 5] [--duration 30] [--code DIR] [--before DIR] [--repeat K]
[--source ftp|vsftpd|local] [--out FILE]``

Per number of streams N and tick interval: a feed process (the FTP server, and a writer
appending ``--rate`` demo lines a second to each of N files), then the measured
processes: ``dask scheduler``, ``dask worker --nworkers W --nthreads 1`` and ``headrace
etl`` (N streams, one file each, ``resample 25ms max``, no history sink). A client of
this process hears every frame's event. Over ``--duration`` seconds it reports:

- stream-ticks per second: frames published, all streams, by their sequence numbers (ideal:
  N / interval), and the share of the ideal;
- close → published: from the end of a frame's last 25 ms period to its publication, p50
  and p95 (a frame waits up to one interval for its tick, by design);
- CPU of the scheduler, the workers and the loop (cores), and the CPU per stream-tick of
  the three together.

``--code DIR`` runs the scheduler, workers and loop from another checkout of headrace
(``PYTHONPATH=DIR``: e.g. the design before issue 23, for figures side by side).
``--before DIR`` runs another checkout in turn with this one, case by case, and
``--repeat K`` each case K times, reporting each figure's median: on a shared machine,
figures of runs minutes apart differ by more than many a change.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import common
from .common import HOST, log, percentiles

PERIOD_S = 0.025


def _feed(
    root: Path, n: int, rate: float, port: int, source: str, latency: float = 0.0, proxy: int = 0
) -> None:
    """The feed process: FTP server and writer, until killed; with ``latency`` (ms), the
    server is reached on port ``proxy`` through a proxy that delays its control channel."""
    from headrace.cluster.demo.ftpserver import FTPServer
    from headrace.cluster.demo.logwriter import LogWriter

    from .latency import Delay

    paths = [root / f"s{i:04d}.log" for i in range(n)]
    for p in paths:
        p.touch()
    server = FTPServer(root, port=port).start() if source == "ftp" else None
    vsftpd = _vsftpd(root, port) if source == "vsftpd" else None
    writer = LogWriter(paths, rate=rate, seed=1, flush_each_line=False).start()
    delay = Delay(proxy, (HOST, port), latency / 1000, HOST).start() if latency else None
    print("feeding", flush=True)
    try:
        while True:
            time.sleep(1)
    finally:
        writer.stop()
        if delay is not None:
            delay.stop()
        if server is not None:
            server.stop()
        if vsftpd is not None:
            vsftpd.kill()


def _vsftpd(root: Path, port: int) -> subprocess.Popen:
    """Debian's vsftpd serving ``root`` (a C server, as on site: its CPU is not ours)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from vsftpd import VSFTPD, config  # the tests' configuration of it

    root.chmod(0o755)  # vsftpd refuses an anonymous root the ftp user could write to
    empty = root.parent / "vsftpd-empty"
    empty.mkdir(mode=0o755, exist_ok=True)
    data = common.free_port()
    conf = root.parent / "vsftpd.conf"
    conf.write_text(config(root, empty, port, (data, data + 200)))
    return subprocess.Popen([str(VSFTPD), str(conf)])


def _config(work: Path, n: int, interval: float, port: int, source: str) -> Path:
    """The loop's configuration: ``n`` streams on the FTP server at ``port`` (or files)."""
    # No history: its writer is a process of its own, measured by benchmarks.history.
    lines = [f"state_dir: {work / 'state'}", "ring: 16", "sink: none", "streams:"]
    for i in range(n):
        path = work / "feed" / f"s{i:04d}.log"
        url = f"ftp://{HOST}:{port}/s{i:04d}.log" if source != "local" else str(path)
        lines += [
            f"  s{i:04d}:",
            f"    source: {url}",
            f"    interval: {interval}",
            "    transform: {resample: 25ms, agg: max}",
        ]
    config = work / "headrace.yaml"
    config.write_text("\n".join(lines) + "\n")
    return config


async def _listen(address: str, n: int, duration: float, settle: float) -> dict:
    """Events heard: wait until every stream published (or ``settle`` s), then measure."""
    from distributed import Client

    from headrace.etl import contract

    heard: list[tuple[str, float, int, int]] = []
    async with Client(address, asynchronous=True) as client:
        contract.subscribe_all(
            client, lambda e: heard.append((e.stream, e.published, e.last, e.seq))
        )
        deadline = time.monotonic() + settle
        while len({h[0] for h in heard}) < n and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        seen = len({h[0] for h in heard})
        await asyncio.sleep(2.0)  # past the start-up's first, larger frames
        t0 = time.time()
        start = len(heard)
        await asyncio.sleep(duration)
        t1 = time.time()
        window = [h for h in heard[start:] if t0 <= h[1] <= t1]
    lags = [published - (last / 1e9 + PERIOD_S) for _, published, last, _ in window]
    p50, p95 = percentiles(lags, (50, 95))
    return dict(
        streams_started=seen,
        frames=len(window),
        ticks_per_s=_rate(window),
        streams_published=len({h[0] for h in window}),
        span=t1 - t0,
        close_to_published_p50_ms=None if p50 is None else round(p50 * 1000),
        close_to_published_p95_ms=None if p95 is None else round(p95 * 1000),
    )


def _rate(window: list[tuple[str, float, int, int]]) -> float:
    """Stream-ticks per second, all streams: each stream's frames (by sequence number)
    between its first and last in the window, over the time between them. Counting the
    frames inside the window instead read one tick of every stream falling either side
    of an edge as a missed tick (5 % at a 1 s tick over 20 s)."""
    by_stream: dict[str, list[tuple[float, int]]] = {}
    for stream, published, _, seq in window:
        by_stream.setdefault(stream, []).append((published, seq))
    rate = 0.0
    for seen in by_stream.values():
        (t_first, s_first), (t_last, s_last) = min(seen), max(seen)
        if t_last > t_first:
            rate += (s_last - s_first) / (t_last - t_first)
    return rate


def run_one(n: int, interval: float, workers: int, args: argparse.Namespace, work: Path) -> dict:
    """One stack of ``n`` streams ticking every ``interval`` seconds, measured."""
    (work / "feed").mkdir(parents=True, exist_ok=True)
    ftp_port, sched_port = common.free_port(), common.free_port()
    # Through a delaying proxy, if any: the workers' FTP commands cross a "network".
    served = common.free_port() if args.latency else ftp_port
    address = f"tcp://{HOST}:{sched_port}"
    env = {"PYTHONPATH": str(Path(args.code).resolve())} if args.code else None
    bin_ = common.VENV_BIN
    feed = common.start(
        [
            sys.executable,
            "-m",
            "benchmarks.streams",
            "--feed",
            work / "feed",
            "--n",
            n,
            "--rate",
            args.rate,
            "--port",
            ftp_port,
            "--source",
            args.source,
            "--latency",
            args.latency,
            "--proxy",
            served,
        ],
        work / "feed.log",
    )
    config = _config(work, n, interval, served, args.source)
    procs: dict[str, object] = {}
    with common.stopping(feed):
        if args.source != "local":
            common.wait_port(served, 60, feed)
        procs["scheduler"] = common.dask_scheduler(sched_port, work / "scheduler.log", env)
        with common.stopping(procs["scheduler"]):
            procs["workers"] = common.dask_workers(address, workers, work / "workers.log", env)
            procs["loop"] = common.start(
                [
                    bin_ / "headrace",
                    "etl",
                    "--config",
                    config,
                    "--scheduler",
                    address,
                    "--metrics-port",
                    "0",
                ],
                work / "loop.log",
                env,
            )
            with common.stopping(procs["loop"], procs["workers"]):
                roots = {role: [p.pid] for role, p in procs.items()}
                stats = common.ProcStats(roots=roots)
                settle = 60 + n * 0.2
                with stats:
                    heard = asyncio.run(_listen(address, n, args.duration, settle))
    roles = common.by_role(stats.result())
    cpu = {role: roles.get(role, {}).get("cpu_per_s", 0.0) for role in procs}
    ticks_per_s = heard["ticks_per_s"]
    total_cpu = sum(cpu.values())
    return dict(
        streams=n,
        interval=interval,
        workers=workers,
        latency_ms=args.latency,
        stream_ticks_per_s=round(ticks_per_s, 1),
        ideal_per_s=round(n / interval, 1),
        share=round(ticks_per_s * interval / n, 3),
        cpu=cpu,
        cpu_ms_per_stream_tick=round(1000 * total_cpu / ticks_per_s, 2) if ticks_per_s else None,
        machine=stats.machine(),
        **heard,
    )


def table(results: list[dict]) -> str:
    rows = [
        "| streams | tick s | workers | + FTP RTT ms | stream-ticks/s (ideal) | share "
        "| close→published p50 / p95 ms "
        "| CPU scheduler / workers / loop (cores) | CPU ms per stream-tick "
        "| machine busy (cores) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        c, machine = r["cpu"], r.get("machine", {})
        busy = machine.get("busy_per_s")
        busy_text = "-" if busy is None else f"{busy:.2f} of {machine.get('cores')}"
        rows.append(
            f"| {r['streams']} | {r['interval']:g} | {r['workers']} | {r.get('latency_ms', 0):g} "
            f"| {r['stream_ticks_per_s']:g} ({r['ideal_per_s']:g}) | {r['share']:.0%} "
            f"| {r['close_to_published_p50_ms']} / {r['close_to_published_p95_ms']} "
            f"| {c['scheduler']:.2f} / {c['workers']:.2f} / {c['loop']:.2f} "
            f"| {r['cpu_ms_per_stream_tick']} "
            f"| {busy_text} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.streams", description=__doc__)
    p.add_argument("--streams", default="10,50,200,1000")
    p.add_argument("--intervals", default="0.2,1")
    p.add_argument("--workers", default="2", help="dask workers, or a list: 1,2,4")
    p.add_argument("--rate", type=float, default=5.0, help="lines per second per stream")
    p.add_argument("--duration", type=float, default=30.0)
    p.add_argument("--source", choices=("ftp", "vsftpd", "local"), default="ftp")
    p.add_argument(
        "--latency",
        type=float,
        default=0.0,
        help="ms added to each FTP command's round trip (a server across the network)",
    )
    p.add_argument("--code", default=None, help="run the cluster and loop from this checkout")
    p.add_argument("--out", default=None, help="JSON file for the figures")
    p.add_argument("--doc", default=None, help="markdown file for the tables (overwritten)")
    p.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="LABEL=JSON",
        help="a table from an earlier run's --out beside this one's (e.g. before=old.json)",
    )
    p.add_argument(
        "--reuse",
        default=None,
        metavar="JSON",
        help="this run's figures from an earlier --out of the same sweep (only the tables)",
    )
    p.add_argument("--repeat", type=int, default=1, help="runs of each case; medians reported")
    p.add_argument(
        "--before",
        default=None,
        metavar="DIR",
        help="another checkout run in turn with this one, case by case (its table beside)",
    )
    p.add_argument("--feed", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--proxy", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.feed is not None:
        return _feed(args.feed, args.n, args.rate, args.port, args.source, args.latency, args.proxy)
    results = json.loads(Path(args.reuse).read_text()) if args.reuse else []
    before: list[dict] = []
    # Case by case, this code and --before in turn: a shared machine's load drifts over a
    # sweep, and figures run minutes apart differ more than the change being measured.
    sides = [(args.code, results)] + ([(args.before, before)] if args.before else [])
    for workers in [] if args.reuse else [int(w) for w in str(args.workers).split(",")]:
        for interval in [float(i) for i in args.intervals.split(",")]:
            for n in [int(s) for s in args.streams.split(",")]:
                runs: dict[int, list[dict]] = {i: [] for i in range(len(sides))}
                for _ in range(max(1, args.repeat)):
                    for i, (code, _) in enumerate(sides):
                        log(f"streams: {n} streams every {interval:g}s, {workers} workers")
                        with tempfile.TemporaryDirectory(prefix="headrace-streams-") as tmp:
                            side = argparse.Namespace(**{**vars(args), "code": code})
                            result = run_one(n, interval, workers, side, Path(tmp))
                        log(f"streams: {json.dumps(result)}")
                        runs[i].append(result)
                for i, (_, out) in enumerate(sides):
                    out.append(median(runs[i]))
    print(table(results))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
        if before:
            Path(args.out).with_suffix(".before.json").write_text(json.dumps(before, indent=1))
    if args.doc:
        tables = [("this run" + (f" ({args.code})" if args.code else ""), results)]
        if before:
            tables.append(
                (f"before ({args.before}), run in turn with this one, case by case", before)
            )
        for item in args.compare:
            label, _, path = item.partition("=")
            tables.append((label, json.loads(Path(path).read_text())))
        common.write_doc(Path(args.doc), "Many streams", "streams", tables, table, argv)


def median(runs: list[dict]) -> dict:
    """The runs of one case as one: each figure's median (dicts figure by figure), and the
    number of runs."""
    if len(runs) == 1:
        return runs[0]

    def of(values: list) -> object:
        if isinstance(values[0], dict):
            return {k: of([v[k] for v in values]) for k in values[0]}
        if all(v == values[0] for v in values):  # the case's own figures (streams, workers)
            return values[0]
        if isinstance(values[0], (int, float)) and not isinstance(values[0], bool):
            middle = statistics.median(values)
            if all(isinstance(v, int) for v in values) and middle == int(middle):
                return int(middle)  # whole figures (ms) stay whole
            return round(float(middle), 3)
        return values[0]

    return {**of(runs), "runs": len(runs)}  # type: ignore[dict-item]


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
