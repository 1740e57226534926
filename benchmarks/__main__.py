"""``python -m benchmarks [--quick] [--only load,peer,parser,hv,cluster] [--out FILE]``.

Runs the benchmarks, prints markdown tables on stdout (progress goes to stderr), writes
every figure as JSON and the tables to docs/results/benchmarks.md (``--doc``). See
docs/benchmarks.md for what is measured and how.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import psutil

from . import common, report
from .common import log

SECTIONS = ("load", "joins", "peer", "parser", "hv", "cluster", "history")
FULL_NS = [1, 5, 20, 50, 100, 200, 500, 1000]
QUICK_NS = [1, 5, 20]
DOC = common.ROOT / "docs" / "results" / "benchmarks.md"


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="N in 1,5,20 and short phases (smoke)")
    p.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help=f"comma-separated sections among {','.join(SECTIONS)}",
    )
    p.add_argument("--out", default=None, help="JSON file (default benchmarks/results/<date>.json)")
    p.add_argument(
        "--doc",
        default=str(DOC),
        help="the markdown report, overwritten (default docs/results/benchmarks.md; none: off)",
    )
    p.add_argument("--viewers", default=None, help="override the sweep, e.g. 1,5,20")
    p.add_argument("--duration", type=float, default=None, help="seconds measured per N")
    p.add_argument("--keep-work", action="store_true", help="keep logs and files of the run")
    args = p.parse_args(argv)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(args.only) - set(SECTIONS)
    if unknown:
        p.error(f"unknown sections {sorted(unknown)}; choose among {', '.join(SECTIONS)}")
    return args


def _load(args: argparse.Namespace, work: Path, results: dict) -> list[dict]:
    from . import data, load

    ns = (
        [int(n) for n in args.viewers.split(",")]
        if args.viewers
        else (QUICK_NS if args.quick else FULL_NS)
    )
    timing = dict(
        settle=2.0 if args.quick else 3.0,
        duration=args.duration or (8.0 if args.quick else 20.0),
        grace=2.0 if args.quick else 3.0,
        cooldown=2.0,
        keep=args.keep_work,
    )
    starts = []
    if {"load", "joins"} & set(args.only):
        starts.append(("headrace", lambda f: load.start_headrace(f, 3, work)))
    if "peer" in args.only:
        starts += [
            ("peer-1p", lambda f: load.start_peer(f, 1, work)),
            ("peer-3p", lambda f: load.start_peer(f, 3, work)),
        ]
    sweeps = []
    # One FTP server and one set of growing files for every system: the same data.
    with data.feed(work / "ftp") as feed:
        for name, start in starts:
            log(f"load: starting {name}")
            try:
                stack = start(feed)
            except Exception as exc:
                log(f"load: {name} did not start: {exc}")
                sweeps.append(
                    dict(
                        system=name,
                        phases=[dict(system=name, n=0, error=str(exc))],
                        capacity=0,
                        skipped=ns,
                    )
                )
                continue
            try:
                if name != "headrace" or "load" in args.only:
                    sweeps.append(load.sweep(stack, feed, ns, work, **timing))
                if name == "headrace" and "joins" in args.only:
                    from . import joins

                    results["joins"] = joins.run(stack, feed, work, args.quick)
            finally:
                stack.stop()
    return sweeps


def _machine() -> dict:
    import bokeh
    import distributed
    import holoviews
    import pandas
    import panel

    return dict(
        python=platform.python_version(),
        platform=platform.platform(),
        cpus=os.cpu_count(),
        memory_gb=round(psutil.virtual_memory().total / 2**30, 1),
        loadavg=os.getloadavg(),
        versions=dict(
            bokeh=bokeh.__version__,
            panel=panel.__version__,
            holoviews=holoviews.__version__,
            distributed=distributed.__version__,
            pandas=pandas.__version__,
        ),
    )


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    # SIGTERM must run the finally blocks that stop every child process group.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    stamp = time.strftime("%Y-%m-%dT%H%M%S") + ("-quick" if args.quick else "")
    out = Path(args.out) if args.out else common.ROOT / "benchmarks" / "results" / f"{stamp}.json"
    work = Path(tempfile.mkdtemp(prefix="headrace-bench-"))
    results: dict = dict(started=stamp, quick=args.quick, sections=args.only, machine=_machine())
    t0 = time.monotonic()
    failed = False
    try:
        if "parser" in args.only:
            from . import parser

            results["parser"] = parser.run(
                lines=200_000 if args.quick else 1_000_000, repeats=1 if args.quick else 3
            )
        if "hv" in args.only:
            from . import hvcost

            results["hv"] = hvcost.run(
                sessions=5 if args.quick else 20,
                ticks=30 if args.quick else 100,
                repeats=1 if args.quick else 3,
            )
        if "cluster" in args.only:
            from . import clustercost

            results["cluster"] = clustercost.run(ticks=30 if args.quick else 100)
        if "history" in args.only:
            from . import history

            results["history"] = history.run(
                days=3 if args.quick else 30, repeats=3 if args.quick else 5
            )
        if {"load", "joins", "peer"} & set(args.only):
            results["load"] = _load(args, work, results)
    except BaseException:
        failed = True
        log(f"benchmarks: failed; logs kept in {work}")
        raise
    finally:
        results["wall_s"] = round(time.monotonic() - t0, 1)
        results["machine"]["loadavg_end"] = os.getloadavg()
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1, default=str) + "\n")
        if not (failed or args.keep_work):
            shutil.rmtree(work, ignore_errors=True)
    text = report.markdown(results)
    print(text)
    print(f"wall time {results['wall_s']:.0f} s; JSON: {out}")
    if args.doc != "none":
        given = sys.argv[1:] if argv is None else argv
        command = shlex.join(["python", "-m", "benchmarks", *given])
        doc = Path(args.doc)
        doc.parent.mkdir(parents=True, exist_ok=True)
        doc.write_text(report.document(text, results, command))
        print(f"report: {doc}")
    if args.keep_work:
        print(f"logs and files: {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
