"""The wheel, and headrace installed from it alone: one package, its data, the command, the demo.

The wheel is built (as ``pip wheel`` builds it, in an isolated build environment) from a
copy of the files a commit would hold, so nothing the checkout has lying about (``build/``,
an egg-info, caches) can slip in. It is installed with ``--no-deps`` into a new venv whose
dependencies come from this interpreter's site-packages through a ``.pth`` file (no
download), and everything then runs from a neutral directory: nothing of the checkout is
importable there, so what works works from the wheel.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest
from helpers import wait_for
from ports import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("etl", "app", "cluster")  # installed as headrace.etl, headrace.app, headrace.cluster
DATA = ["headrace/app/pages/login.html", "headrace/cluster/grafana/headrace.json"]


def committable_files() -> list[str]:
    """The checkout's files as a commit of it would hold them (tracked and not ignored)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return sorted({p for p in listed.split("\0") if p and os.path.lexists(ROOT / p)})


def copy_files(files: list[str], to: Path) -> None:
    for name in files:
        src, dst = ROOT / name, to / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():  # headrace/etl -> ../etl, as git has it
            dst.symlink_to(os.readlink(src))
        else:
            shutil.copy2(src, dst)


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without anything that would make the checkout importable."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.pop("VIRTUAL_ENV", None)
    return {**env, "PYTHONNOUSERSITE": "1", **extra}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, list[str]]:
    """The wheel built from a copy of the committable files, and those files."""
    tmp = tmp_path_factory.mktemp("wheel")
    files = committable_files()
    copy_files(files, tmp / "src")
    started = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp / "dist"), "."],
        cwd=tmp / "src",
        env=clean_env(),
        check=True,
        timeout=300,
    )
    print(f"wheel built in {time.monotonic() - started:.1f} s")
    (wheel,) = (tmp / "dist").glob("headrace-*.whl")
    return wheel, files


@pytest.fixture(scope="module")
def venv(built, tmp_path_factory) -> Path:
    """A new venv holding headrace from the wheel; its dependencies are this interpreter's."""
    wheel, _ = built
    where = tmp_path_factory.mktemp("install") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    pip = [sys.executable, "-m", "pip", "--python", str(where / "bin" / "python")]
    subprocess.run(
        [*pip, "install", "--no-deps", "--no-index", "-q", str(wheel)],
        env=clean_env(),
        check=True,
        timeout=120,
    )
    site = subprocess.run(
        [
            str(where / "bin" / "python"),
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # Only a path on sys.path: the .pth files over there (the checkout's editable install)
    # are not read, so headrace can only come from this venv's own site-packages.
    (Path(site) / "headrace_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return where


@pytest.fixture
def neutral(tmp_path) -> Path:
    """A working directory with nothing of headrace in it."""
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    return cwd


def test_the_wheel_holds_one_package_headrace_as_real_files(built):
    wheel, files = built
    with zipfile.ZipFile(wheel) as z:
        infos = z.infolist()
        names = {i.filename for i in infos}
        dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        assert z.read(f"{dist_info}/top_level.txt").decode().split() == ["headrace"]
        entry_points = z.read(f"{dist_info}/entry_points.txt").decode()
        assert "headrace = headrace.cluster.cli:main" in entry_points
        links = [i.filename for i in infos if stat.S_ISLNK(i.external_attr >> 16)]
        assert not links, f"symlinks in the wheel: {links}"
    assert {n.split("/")[0] for n in names} == {"headrace", dist_info}
    # headrace/'s own modules and every file of etl/, app/ and cluster/ (modules and
    # data) under headrace/, nothing else.
    own = {f"headrace/{p.name}" for p in (ROOT / "headrace").glob("*.py")}
    assert own >= {"headrace/__init__.py", "headrace/live.py"}
    expected = own | {
        f"headrace/{f}" for f in files if f.split("/")[0] in FOLDERS and "__pycache__" not in f
    }
    package = {n for n in names if n.startswith("headrace/") and not n.endswith("/")}
    assert not expected - package, f"missing from the wheel (package-data?): {expected - package}"
    assert not package - expected, f"in the wheel but not in the sources: {package - expected}"
    assert set(DATA) <= package
    with zipfile.ZipFile(wheel) as z:
        assert b"<html" in z.read("headrace/app/pages/login.html").lower()
        assert z.read("headrace/etl/__init__.py") == (ROOT / "etl" / "__init__.py").read_bytes()


def run_venv(venv: Path, cwd: Path, program: str, *args: str, timeout: float = 120) -> str:
    """Stdout of the venv's ``program`` run with ``args`` from ``cwd``; it must succeed."""
    done = subprocess.run(
        [str(venv / "bin" / program), *args],
        cwd=cwd,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def run_python(venv: Path, cwd: Path, code: str) -> str:
    return run_venv(venv, cwd, "python", "-c", code)


IMPORTS = """
import importlib, importlib.resources, json, os, sys
import headrace, headrace.etl.contract, headrace.app.pages, headrace.cluster.cli
found = {m: sys.modules[m].__file__ for m in
         ("headrace", "headrace.etl.contract", "headrace.app.pages", "headrace.cluster.cli")}
old = {}
for name in ("etl", "app", "cluster"):
    try:
        importlib.import_module(name)
        old[name] = "imported"
    except ImportError as exc:
        old[name] = type(exc).__name__
login = importlib.resources.files("headrace.app.pages").joinpath("login.html")
print(json.dumps({"found": found, "old": old, "login": login.is_file(),
                  "stream": headrace.Stream.__module__,
                  "path": [os.path.realpath(p or ".") for p in sys.path]}))
"""


def test_installed_headrace_imports_from_the_venv_and_the_old_names_do_not(venv, neutral):
    out = json.loads(run_python(venv, neutral, IMPORTS))
    for module, file in out["found"].items():
        assert Path(file).is_relative_to(venv), f"{module} from {file}, not the venv {venv}"
    assert out["old"] == {n: "ModuleNotFoundError" for n in ("etl", "app", "cluster")}
    assert out["login"] is True
    assert out["stream"] == "headrace.etl.streams"
    assert str(ROOT) not in out["path"]


def test_the_command_from_the_venv(venv, neutral):
    out = run_venv(venv, neutral, "headrace", "--help", timeout=60)
    for command in ("demo", "etl", "serve", "worker"):
        assert re.search(rf"^\s+{command}\s", out, re.M), out


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, ""
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, ""


def counter(text: str, name: str) -> float:
    """The sum of a Prometheus counter's samples (every label set)."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(f"{name}_total")
    )


def accepting(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def running_from(venv: Path) -> list[int]:
    """Processes whose command line names the venv (the demo, its Panel processes, workers)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if str(venv).encode() in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                pass
    return pids


@pytest.mark.timeout(300)
def test_headrace_demo_from_the_wheel_serves_live_data_and_stops(venv, neutral):
    port, ftp, scheduler, dask_dashboard, metrics = (free_port() for _ in range(5))
    cmd = [str(venv / "bin" / "headrace"), "demo", "--streams", "1", "--num-procs", "1"]
    cmd += ["--port", str(port), "--ftp-port", str(ftp), "--scheduler-port", str(scheduler)]
    cmd += ["--dashboard-address", f"127.0.0.1:{dask_dashboard}", "--metrics-port", str(metrics)]
    cmd += ["--workdir", str(neutral / "demo")]
    log_path = neutral / "demo.log"
    with open(log_path, "wb") as log:
        demo = subprocess.Popen(
            cmd,
            cwd=neutral,
            env=clean_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output() -> str:
        return log_path.read_text(errors="replace")

    def up() -> bool:
        assert demo.poll() is None, f"headrace demo exited with {demo.returncode}:\n{output()}"
        return "headrace demo is up" in output()

    try:
        wait_for(up, 120, lambda: f"headrace demo to start:\n{output()[-3000:]}", step=0.25)
        dashboard = re.search(r"dashboard:\s+(http://\S+)", output()).group(1)
        assert dashboard == f"http://localhost:{port}/dashboard"
        page = f"http://127.0.0.1:{port}/dashboard"
        status = wait_for(lambda: get(page)[0] == 200 and get(page), 60, f"{page} to answer 200")
        assert "headrace" in status[1].lower()
        # The page's session started the Panel process's subscriber: rows arrive from the cluster.
        wait_for(
            lambda: (
                counter(get(f"http://127.0.0.1:{port}/metrics")[1], "headrace_rows_ingested") > 0
            ),
            90,
            lambda: f"rows in the Panel process:\n{output()[-3000:]}",
            step=0.5,
        )
        assert counter(get(f"http://127.0.0.1:{metrics}/metrics")[1], "headrace_ticks") > 0
        os.killpg(demo.pid, signal.SIGINT)  # Ctrl-C
        demo.wait(60)
        wait_for(lambda: not accepting(port), 20, "the Panel processes to stop")
        wait_for(
            lambda: not running_from(venv), 20, lambda: f"processes left: {running_from(venv)}"
        )
        assert "demo: stopped" in output(), output()[-3000:]
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait(10)
        for pid in running_from(venv):  # only what this test started from its own venv
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
