"""``headrace worker``: a real `dask worker` outlives restarts of a real `dask scheduler`."""

from __future__ import annotations

import signal
import subprocess
import sys

import psutil
import pytest
from distributed import Client
from helpers import dask_scheduler, dask_worker, spawn, wait_for
from ports import free_port

from headrace.cluster import processes


def workers(address: str) -> int:
    try:
        with Client(address, timeout=3) as client:
            return len(client.scheduler_info(n_workers=-1)["workers"])
    except OSError:
        return 0


def dask_processes(root: psutil.Process) -> list[psutil.Process]:
    try:
        return root.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


@pytest.mark.fault
@pytest.mark.timeout(300)
def test_the_worker_comes_back_after_each_scheduler_restart_and_stops_when_told(tmp_path):
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    log = open(tmp_path / "worker.log", "ab")  # noqa: SIM115
    slog = open(tmp_path / "scheduler.log", "ab")  # noqa: SIM115
    scheduler = dask_scheduler(port, slog)
    supervisor = dask_worker(address, log)
    try:
        wait_for(lambda: workers(address) == 1, 60, "the worker")
        for _ in range(2):
            processes.stop(scheduler, grace=0)  # SIGKILL: the worker closes after it
            scheduler = dask_scheduler(port, slog)
            # The worker notices its scheduler gone, exits and is started again after a
            # backoff of up to supervise.MAX_DELAY: on a busy machine that can take a while.
            wait_for(lambda: workers(address) == 1, 120, "the worker, again")
        children = dask_processes(psutil.Process(supervisor.pid))
        assert children, "no dask worker under headrace worker"
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(30) == 0
        _, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, alive  # the nanny and its worker stopped with it
    finally:
        processes.stop(supervisor)
        processes.stop(scheduler)
        log.close()
        slog.close()
    text = (tmp_path / "worker.log").read_text()
    assert text.count("worker: started dask worker") == 3, text
    assert "exited with code" in text and "starting it again in 1 s" in text, text
    assert "worker: SIGTERM received, stopping dask worker" in text


def test_a_worker_that_cannot_start_is_not_restarted(tmp_path):
    with open(tmp_path / "worker.log", "ab") as log:
        proc = spawn(
            [sys.executable, "-m", "headrace.cluster.cli", "worker", "--no-such-option"], log
        )
        try:
            code = proc.wait(60)
        except subprocess.TimeoutExpired:
            processes.stop(proc)
            raise
    text = (tmp_path / "worker.log").read_text()
    assert code != 0, text
    assert text.count("worker: started dask worker") == 3, text  # supervise.FIRST_TRIES
    assert "failed at start 3 times" in text and "not restarting it" in text, text
    assert "no-such-option" in text  # dask worker's own message, above ours
