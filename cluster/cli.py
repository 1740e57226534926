"""The ``headrace`` command, every subcommand in one place.

``etl`` runs the tick loop, ``serve`` the dashboard, ``demo`` both with an FTP server and data.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import click

from headrace.cluster.logs import setup_logging


def scheduler_option(
    help: str = "Dask scheduler. Default: DASK_SCHEDULER_ADDRESS, else tcp://127.0.0.1:8786.",
) -> Any:
    """``--scheduler ADDRESS``, as every command that talks to the cluster takes it."""
    return click.option("--scheduler", default=None, metavar="ADDRESS", help=help)


def tls_options(command: Any) -> Any:
    """``--tls-ca-file/--tls-cert/--tls-key``, as ``dask scheduler`` and ``dask worker`` have."""
    for name, what in reversed(
        [
            ("--tls-ca-file", "CA certificate the cluster's certificates are signed by."),
            ("--tls-cert", "This process's certificate (PEM)."),
            ("--tls-key", "Its private key (PEM)."),
        ]
    ):
        command = click.option(name, default=None, type=click.Path(dir_okay=False), help=what)(
            command
        )
    return command


def tls_files(options: dict[str, Any]) -> Any:
    """The TLS files of a command's options, or None; a bad combination is a usage error."""
    from headrace.cluster.security.tls import TLSFiles

    try:
        return TLSFiles.given(
            options.pop("tls_ca_file"), options.pop("tls_cert"), options.pop("tls_key")
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


@click.group()
@click.option("--log-level", default="INFO", show_default=True, help="Python logging level.")
def main(log_level: str) -> None:
    """headrace: compute live data once on Dask, stream it to every Panel viewer."""
    setup_logging(log_level)


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("dask_worker_args", nargs=-1, type=click.UNPROCESSED)
def worker(dask_worker_args: tuple[str, ...]) -> None:
    """Run `dask worker ARGS...`, and start it again whenever it stops.

    Dask workers close when their scheduler goes away; where no systemd or Kubernetes
    restarts them, this does. Every argument goes to `dask worker` as it is, e.g.
    `headrace worker tcp://10.0.0.2:8786 --nworkers 2 --nthreads 1`.
    """
    from headrace.cluster.supervise import supervise, worker_command

    sys.exit(supervise(worker_command(dask_worker_args)))


@main.command()
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="YAML file defining the streams.",
)
@scheduler_option(
    "Dask scheduler, e.g. tcp://127.0.0.1:8786. Default: DASK_SCHEDULER_ADDRESS, "
    "else an embedded LocalCluster on :8786 (dashboard :8787)."
)
@click.option("--state-dir", default=None, help="Overrides the config's state_dir.")
@click.option(
    "--metrics-port",
    default=8790,
    show_default=True,
    type=click.IntRange(min=0),
    help="Serve Prometheus metrics at http://ADDRESS:PORT/metrics (0: off).",
)
@click.option("--metrics-address", default="127.0.0.1", show_default=True)
@tls_options
def etl(
    config_path: str,
    scheduler: str | None,
    state_dir: str | None,
    metrics_port: int,
    metrics_address: str,
    **tls: Any,
) -> None:
    """Run the tick loop: extract, transform and publish every stream every interval."""
    from headrace.cluster.security import tls as dask_tls
    from headrace.cluster.service import serve
    from headrace.etl.config import load
    from headrace.etl.store.state import StateError
    from headrace.etl.streams import ConfigError

    dask_tls.configure(tls_files(tls))
    try:
        config = load(config_path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        asyncio.run(
            serve(
                config.streams,
                scheduler=scheduler or config.scheduler,
                state_dir=state_dir or config.state_dir,
                ring=config.ring,
                cluster=config.cluster,
                sink=config.sink,
                metrics=(metrics_address, metrics_port) if metrics_port else None,
                database=config.state,
            )
        )
    except StateError as exc:  # cannot open the state: nothing ran, nothing to lose
        raise click.ClickException(str(exc)) from None


@main.command()
@click.option("--streams", default=3, show_default=True, help="Number of demo streams.")
@click.option("--rate", default=40.0, show_default=True, help="Lines per second per stream.")
@click.option("--interval", default=0.2, show_default=True, help="Tick interval in seconds.")
@click.option("--num-procs", default=3, show_default=True, help="Panel server processes.")
@click.option("--port", default=5006, show_default=True, help="Panel port.")
@click.option("--ftp-port", default=2121, show_default=True)
@click.option("--scheduler-port", default=8786, show_default=True)
@click.option(
    "--dashboard-address",
    default="127.0.0.1:8787",
    show_default=True,
    help="Dask dashboard address.",
)
@click.option("--workdir", default=None, help="Where log files and state go (default: a temp dir).")
@click.option("--metrics-port", default=8790, show_default=True, help="The loop's /metrics port.")
@click.option(
    "--tls", is_flag=True, help="Dask over tls:// only, with certificates made for the run."
)
@click.option("--basic-auth", default=None, metavar="PASSWORD|FILE", help="Require a login.")
def demo(**options: Any) -> None:
    """Run everything on this machine: FTP server with live logs, Dask, tick loop, Panel."""
    from headrace.cluster.demo.stack import main as run_demo

    run_demo(**options)


@main.command("serve", context_settings={"ignore_unknown_options": True})
@click.option(
    "--num-procs",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Panel processes (each fetches every frame once for all its sessions).",
)
@scheduler_option()
@click.option("--port", default=5006, show_default=True, type=int)
@click.option("--address", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option(
    "--window",
    default=None,
    type=click.FloatRange(min=1),
    help="Seconds of data kept and shown per stream (default 600).",
)
@click.option(
    "--history",
    default=None,
    metavar="URL",
    help="SQLAlchemy URL of the history database the loop writes (its sink), for looking "
    "back. Default: HEADRACE_HISTORY.",
)
@click.option(
    "--allow-websocket-origin",
    "origins",
    multiple=True,
    metavar="HOST[:PORT]",
    help="A host browsers reach the dashboard by (repeatable); required with --address "
    "other than 127.0.0.1.",
)
@click.option(
    "--basic-auth",
    default=None,
    metavar="PASSWORD|FILE",
    help="Require a login: one password, or a JSON file of {user: password}.",
)
@click.option(
    "--state-dir",
    default=".headrace",
    show_default=True,
    help="Where the login cookie secret and the metrics token are kept (0600).",
)
@click.option(
    "--metrics-token-file",
    default=None,
    help="With logins on: the bearer token Prometheus sends for /metrics (default: made "
    "in --state-dir).",
)
@click.option(
    "--spike-threshold",
    "spikes",
    default=None,
    type=float,
    help="Mark rows above this value on the dashboard's plots (default: HEADRACE_SPIKES).",
)
@click.option(
    "--prepared",
    default=None,
    type=click.IntRange(min=0),
    help="Sessions each Panel process keeps built ahead per page, so that opening one "
    "costs a rename, not a build (default: HEADRACE_PREPARED, else 32; 0: none).",
)
@click.option(
    "--print-command",
    is_flag=True,
    help="Print the `panel serve` command (and its environment) instead of running it.",
)
@tls_options
@click.argument("extra", nargs=-1, type=click.UNPROCESSED)
def serve(
    num_procs: int,
    scheduler: str | None,
    port: int,
    address: str,
    window: float | None,
    history: str | None,
    origins: tuple[str, ...],
    basic_auth: str | None,
    state_dir: str,
    metrics_token_file: str | None,
    spikes: float | None,
    prepared: int | None,
    print_command: bool,
    extra: tuple[str, ...],
    **tls: Any,
) -> None:
    """Serve the live dashboard at http://ADDRESS:PORT/dashboard (and /ops, /metrics).

    `headrace serve my_dashboard.py` serves your own Panel app instead, at /my_dashboard,
    with the same subscriber, fan-out, logins and /metrics. Other arguments after the
    options go to `panel serve` as they are (e.g. --oauth-provider).
    """
    import shlex
    from pathlib import Path

    from headrace.cluster.panel import apps_in, panel_command, serve_command, serve_env
    from headrace.cluster.security.access import Access

    try:
        apps, rest = apps_in(extra)
    except FileNotFoundError as exc:
        raise click.UsageError(str(exc)) from None
    files = tls_files(tls)
    access = Access(address, port, origins, basic_auth, Path(state_dir), metrics_token_file)
    try:
        access.check(rest)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if print_command:
        env = serve_env(scheduler, window, history, spikes=spikes, prepared=prepared)
        shown = {k: env[k] for k in sorted(env) if k.startswith(("DASK_", "HEADRACE_", "BOKEH_"))}
        cmd = panel_command(num_procs, port, address, rest, access, apps)
        click.echo(
            " ".join([*(f"{k}={shlex.quote(v)}" for k, v in shown.items()), *map(shlex.quote, cmd)])
        )
        return
    for page in [a.stem for a in apps] or ["dashboard"]:
        click.echo(f"headrace serve: http://{address}:{port}/{page}", err=True)
    code = serve_command(
        num_procs,
        scheduler,
        port,
        address,
        rest,
        window,
        history=history,
        access=access,
        tls=files,
        apps=apps,
        spikes=spikes,
        prepared=prepared,
    )
    raise SystemExit(code)


@main.command()
@scheduler_option()
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of lines.")
@click.option(
    "--stale-after",
    default=30.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Seconds without a publication after which a stream counts as stale.",
)
@click.option(
    "--malformed",
    "stream",
    default=None,
    metavar="STREAM",
    help="Instead: the newest malformed lines kept for STREAM (needs --state-dir or --config).",
)
@click.option(
    "--stream", "only", multiple=True, metavar="NAME", help="Only this stream (repeatable)."
)
@click.option("--limit", default=20, show_default=True, help="Malformed lines shown.")
@click.option("--state-dir", default=None, help="The loop's state directory.")
@click.option("--config", "config_path", default=None, type=click.Path(dir_okay=False))
@tls_options
def status(
    scheduler: str | None,
    as_json: bool,
    stale_after: float,
    stream: str | None,
    only: tuple[str, ...],
    limit: int,
    state_dir: str | None,
    config_path: str | None,
    **tls: Any,
) -> None:
    """One line per stream: seq, lag, rate, malformed lines, last error.

    Exits 0 when every stream is healthy, 1 if one is stale, 2 if one is failing,
    3 if the scheduler cannot be reached or no stream has reported.
    """
    from headrace.cluster import status as st
    from headrace.cluster.security import tls as dask_tls
    from headrace.etl.contract import DEFAULT_SCHEDULER, configured_scheduler

    dask_tls.configure(tls_files(tls))
    if stream is not None:
        database = None
        if config_path is not None:
            from headrace.etl.config import load

            config = load(config_path)
            state_dir, database = state_dir or str(config.state_dir), config.state
        if state_dir is None:
            raise click.UsageError("--malformed needs --state-dir or --config")
        text, code = st.malformed(state_dir, stream, limit, as_json, database)
    else:
        address = configured_scheduler(scheduler) or DEFAULT_SCHEDULER
        text, code = st.report(address, stale_after, as_json, only=only)
    click.echo(text)
    raise SystemExit(code)


@main.group()
def state() -> None:
    """The loop's state: where it lives."""


@state.command("move")
@click.argument("source")
@click.argument("target")
@click.option(
    "--password-env",
    default=None,
    metavar="NAME",
    help="Environment variable with the password of the URL(s), if not in them.",
)
def state_move(source: str, target: str, password_env: str | None) -> None:
    """Move the state from SOURCE to TARGET: each a state directory or a SQLAlchemy URL.

    Checkpoints, the history backlog, dead letters and the lease's epoch move in one
    transaction; the source is emptied after. Stop the loop first: a loop holding the
    source's lease refuses the move, and so does a TARGET that already holds a state.
    Then point the config's `state:` (or `state_dir`) at TARGET.
    """
    from headrace.etl.store.move import Place, move
    from headrace.etl.store.state import StateError

    try:
        moved = move(Place.parse(source, password_env), Place.parse(target, password_env))
    except (StateError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"moved {moved.streams} streams, {moved.backlog} backlog frames and "
        f"{moved.dead_letters} dead letters to {Place.parse(target)}"
    )


if __name__ == "__main__":
    main()
