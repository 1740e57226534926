"""The dashboard's processes: ``panel serve`` of headrace's pages, pointed at a Dask scheduler.

``headrace serve`` runs this. Running ``panel serve`` directly works too (this is all
it does; ``PAGES`` is the installed ``headrace/app/pages`` folder)::

    DASK_SCHEDULER_ADDRESS=tcp://127.0.0.1:8786 HEADRACE_WINDOW=600 \\
        python -m panel serve $PAGES/dashboard.py --num-procs 3 --port 5006 \\
        --address 127.0.0.1 --allow-websocket-origin 127.0.0.1:5006 \\
        --allow-websocket-origin localhost:5006 --setup $PAGES/../warmup.py

and the dashboard is at http://localhost:5006/dashboard (add ``$PAGES/ops.py`` for the
operator page at ``/ops``, ``--plugins headrace.app.metrics`` for ``/metrics``, and
``PROMETHEUS_MULTIPROC_DIR`` for every process's figures). ``--setup warmup.py`` is
optional: it starts each process's subscriber when the process starts (with
``--num-procs`` > 1; Panel runs it after the fork) instead of with its first session,
so the first viewer finds the window filled. Each process connects to the scheduler
once, whatever the number of sessions.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from headrace.app import pages
from headrace.app.metrics import MULTIPROC_ENV
from headrace.app.settings import HISTORY_ENV, PREPARED_ENV, SPIKES_ENV, WINDOW_ENV
from headrace.cluster import processes
from headrace.cluster.security.access import Access
from headrace.cluster.security.tls import TLSFiles, environ
from headrace.etl.contract import DEFAULT_SCHEDULER, configured_scheduler

PAGES = Path(pages.__file__).resolve().parent
DASHBOARD = PAGES / "dashboard.py"
OPS = PAGES / "ops.py"
WARMUP = PAGES.parent / "warmup.py"  # a script Panel runs, never imported here


def apps_in(extra: Sequence[str]) -> tuple[list[Path], list[str]]:
    """Split ``headrace serve``'s extra arguments into app files and ``panel serve`` flags.

    An app is a Python script, notebook or Markdown file that exists (``my_dashboard.py``);
    a missing one is an error that names it.
    """
    apps, rest = [], []
    for arg in extra:
        if not arg.startswith("-") and Path(arg).suffix in APP_SUFFIXES:
            path = Path(arg)
            if not path.is_file():
                raise FileNotFoundError(f"headrace serve: no app file {arg!r}")
            apps.append(path.resolve())
        else:
            rest.append(arg)
    return apps, rest


APP_SUFFIXES = (".py", ".ipynb", ".md")


def panel_command(
    num_procs: int = 1,
    port: int = 5006,
    address: str = "127.0.0.1",
    extra: Sequence[str] = (),
    access: Access | None = None,
    apps: Sequence[Path] = (),
) -> list[str]:
    """The ``python -m panel serve ...`` argument list ``headrace serve`` runs.

    ``apps`` are served instead of the dashboard (a user's ``my_dashboard.py``); the
    operator page is always there.
    """
    access = access or Access(address, port)
    pages = [str(a) for a in apps] or [str(DASHBOARD)]
    cmd = [sys.executable, "-m", "panel", "serve", *pages, str(OPS)]
    cmd += ["--num-procs", str(num_procs), "--port", str(port), "--address", address]
    cmd += ["--plugins", "headrace.app.metrics", *access.args(extra)]
    # The page's GET is answered from one session rendered per process and theme: only
    # the websocket builds a session, in whichever process the kernel hands it to.
    # Without it, every open built a page for the GET too (two builds per open).
    cmd += ["--reuse-sessions"]
    # A page waiting for its turn to open (headrace.app.live.admission) shows a spinner.
    cmd += ["--global-loading-spinner"]
    if num_procs > 1:
        # Panel runs --setup in each child after the fork, on its loop; with one process it
        # would run before the loop exists, so there the first session starts the subscriber.
        cmd += ["--setup", str(WARMUP)]
    return [*cmd, *extra]


def metrics_dir(port: int) -> Path:
    """An empty directory for the processes' Prometheus files, one per port (reused)."""
    path = Path(tempfile.gettempdir()) / f"headrace-metrics-{os.getuid()}-{port}"
    shutil.rmtree(path, ignore_errors=True)  # figures of an earlier run's processes
    path.mkdir(mode=0o700)
    return path


def serve_env(
    scheduler: str | None = None,
    window: float | None = None,
    history: str | None = None,
    port: int | None = None,
    spikes: float | None = None,
    prepared: int | None = None,
) -> dict[str, str]:
    """The environment for the panel processes: scheduler, window, and ``app`` importable.

    With ``port``, a fresh ``PROMETHEUS_MULTIPROC_DIR`` too (unless one is set): set
    before the processes fork, so that ``/metrics`` reports every one of them.
    """
    env = dict(os.environ)
    # Pages load Panel's and Bokeh's files from this server, never a CDN (sites without
    # internet access); an inherited BOKEH_RESOURCES=cdn (importing panel.io.pyodide sets
    # it, for one) would make some stylesheets come from cdn.holoviz.org.
    env["BOKEH_RESOURCES"] = "server"
    if port is not None and not env.get(MULTIPROC_ENV):
        env[MULTIPROC_ENV] = str(metrics_dir(port))
    env["DASK_SCHEDULER_ADDRESS"] = configured_scheduler(scheduler) or DEFAULT_SCHEDULER
    if window is not None:
        env[WINDOW_ENV] = str(window)
    if history is not None:
        env[HISTORY_ENV] = history
    if spikes is not None:
        env[SPIKES_ENV] = str(spikes)
    if prepared is not None:
        env[PREPARED_ENV] = str(prepared)
    return env


def serve_command(
    num_procs: int,
    scheduler: str | None,
    port: int,
    address: str = "127.0.0.1",
    extra: Sequence[str] = (),
    window: float | None = None,
    wait: bool = True,
    history: str | None = None,
    access: Access | None = None,
    tls: TLSFiles | None = None,
    apps: Sequence[Path] = (),
    spikes: float | None = None,
    prepared: int | None = None,
    **popen: object,
) -> subprocess.Popen | int:
    """Run the dashboard in ``num_procs`` Panel processes on ``address:port``.

    ``access`` says who may connect (default: this machine only, no login; see
    :mod:`headrace.cluster.security.access`); ``tls`` the Dask TLS files of the processes' clients.
    ``scheduler`` defaults to ``DASK_SCHEDULER_ADDRESS`` / dask config, else
    ``tcp://127.0.0.1:8786``. With ``wait`` (the CLI) it returns panel's exit code;
    otherwise the running ``Popen`` in a process group of its own, which
    :func:`headrace.cluster.processes.stop` stops with its forked children. ``apps`` are
    served instead of the dashboard (see :func:`panel_command`). ``popen`` goes to
    ``subprocess.Popen`` (``stdout=``, ``stderr=``...).
    """
    access = access or Access(address, port)
    access.check(extra)
    cmd = panel_command(num_procs, port, address, extra, access, apps)
    env = {
        **serve_env(scheduler, window, history, port, spikes, prepared),
        **access.env(extra),
        **environ(tls),
    }
    if not wait:
        return processes.start(cmd, env, **popen)
    proc = subprocess.Popen(cmd, env=env, **popen)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        return proc.wait()
