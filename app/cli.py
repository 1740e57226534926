"""``headrace serve``: run the dashboard with ``panel serve``, pointed at a Dask scheduler.

Running ``panel serve`` directly works too (this is all the command does)::

    DASK_SCHEDULER_ADDRESS=tcp://127.0.0.1:8786 HEADRACE_WINDOW=600 \\
        python -m panel serve app/dashboard.py --num-procs 3 --port 5006 \\
        --address 127.0.0.1 --allow-websocket-origin 127.0.0.1:5006 \\
        --allow-websocket-origin localhost:5006 --setup app/warmup.py

and the dashboard is at http://localhost:5006/dashboard. ``--setup app/warmup.py`` is
optional: it starts each process's subscriber when the process starts (with
``--num-procs`` > 1; Panel runs it after the fork) instead of with its first session,
so the first viewer finds the window filled. Each process connects to the scheduler
once, whatever the number of sessions.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import click

APP_DIR = Path(__file__).resolve().parent
DASHBOARD = APP_DIR / "dashboard.py"
WARMUP = APP_DIR / "warmup.py"


def panel_command(
    num_procs: int = 1,
    port: int = 5006,
    address: str = "127.0.0.1",
    extra: Sequence[str] = (),
) -> list[str]:
    """The ``python -m panel serve ...`` argument list ``headrace serve`` runs."""
    origins = dict.fromkeys([f"{address}:{port}", f"localhost:{port}", f"127.0.0.1:{port}"])
    cmd = [sys.executable, "-m", "panel", "serve", str(DASHBOARD)]
    cmd += ["--num-procs", str(num_procs), "--port", str(port), "--address", address]
    for origin in origins:
        cmd += ["--allow-websocket-origin", origin]
    if num_procs > 1:
        # Panel runs --setup in each child after the fork, on its loop; with one process it
        # would run before the loop exists, so there the first session starts the subscriber.
        cmd += ["--setup", str(WARMUP)]
    return [*cmd, *extra]


def serve_env(scheduler: str | None = None, window: float | None = None) -> dict[str, str]:
    """The environment for the panel processes: scheduler, window, and ``app`` importable."""
    from app.subscriber import WINDOW_ENV, scheduler_address

    env = dict(os.environ)
    env["DASK_SCHEDULER_ADDRESS"] = scheduler or scheduler_address()
    if window is not None:
        env[WINDOW_ENV] = str(window)
    root = str(APP_DIR.parent)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in paths:
        env["PYTHONPATH"] = os.pathsep.join([root, *paths])
    return env


def serve_command(
    num_procs: int,
    scheduler: str | None,
    port: int,
    address: str = "127.0.0.1",
    extra: Sequence[str] = (),
    window: float | None = None,
    wait: bool = True,
    **popen: object,
) -> subprocess.Popen | int:
    """Run the dashboard in ``num_procs`` Panel processes on ``address:port``.

    ``scheduler`` defaults to ``DASK_SCHEDULER_ADDRESS`` / dask config, else
    ``tcp://127.0.0.1:8786``. With ``wait`` (the CLI) it returns panel's exit code;
    otherwise the running ``Popen`` (started in its own session, so that
    ``os.killpg(proc.pid, ...)`` stops the forked children too). ``popen`` goes to
    ``subprocess.Popen`` (``stdout=``, ``stderr=``...).
    """
    cmd = panel_command(num_procs, port, address, extra)
    proc = subprocess.Popen(
        cmd, env=serve_env(scheduler, window), start_new_session=not wait, **popen
    )
    if not wait:
        return proc
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        return proc.wait()


def stop_serving(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """Stop a ``serve_command(..., wait=False)``: SIGTERM its process group, then SIGKILL.

    The group holds the forked ``--num-procs`` children, which a signal to ``proc`` alone
    would leave running.
    """

    def group_alive() -> bool:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return False
        return True

    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while group_alive():
        proc.poll()  # reap the leader, or the group never looks empty
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


@click.command("serve", context_settings={"ignore_unknown_options": True})
@click.option(
    "--num-procs",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Panel processes (each fetches every frame once for all its sessions).",
)
@click.option(
    "--scheduler",
    default=None,
    metavar="ADDRESS",
    help="Dask scheduler. Default: DASK_SCHEDULER_ADDRESS, else tcp://127.0.0.1:8786.",
)
@click.option("--port", default=5006, show_default=True, type=int)
@click.option("--address", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option(
    "--window",
    default=None,
    type=click.FloatRange(min=1),
    help="Seconds of data kept and shown per stream (default 600).",
)
@click.argument("extra", nargs=-1, type=click.UNPROCESSED)
def serve(
    num_procs: int,
    scheduler: str | None,
    port: int,
    address: str,
    window: float | None,
    extra: tuple[str, ...],
) -> None:
    """Serve the live dashboard at http://ADDRESS:PORT/dashboard.

    Arguments after the options go to `panel serve` as they are.
    """
    click.echo(f"headrace serve: http://{address}:{port}/dashboard", err=True)
    raise SystemExit(serve_command(num_procs, scheduler, port, address, list(extra), window))
