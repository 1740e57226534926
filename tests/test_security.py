"""Nobody gets in, nothing leaks, the page needs no internet: `headrace demo --tls
--basic-auth` as real processes, a browser with the network blocked, clients without
credentials or certificates, and pages from other origins."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from distributed import LocalCluster
from helpers import (
    PLOT_STATE,
    Publisher,
    chromium,
    headrace_serve,
    needs_chromium,
    publishing,
    wait_for,
    wait_http,
)
from ports import free_port
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from headrace.cluster import processes
from headrace.cluster.security.access import Access

PASSWORD = "pw-9f3a1c"


def get(url: str, headers: dict | None = None) -> tuple[int, str, str]:
    """(status, body, Location) without following redirects."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(urllib.request.Request(url, headers=headers or {}), timeout=10) as r:
            return r.status, r.read().decode(errors="replace"), ""
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace"), e.headers.get("Location", "")


async def open_ws(url: str, origin: str | None = None, cookie: str | None = None):
    headers = {"Origin": origin} if origin else {}
    if cookie:
        headers["Cookie"] = cookie
    from bokeh.util.token import generate_jwt_token, generate_session_id

    token = generate_jwt_token(generate_session_id())
    request = HTTPRequest(url.replace("http://", "ws://") + "/ws", headers=headers)
    conn = await websocket_connect(request, subprotocols=["bokeh", token])
    conn.close()


@needs_chromium
@pytest.mark.browser
@pytest.mark.timeout(240)
def test_demo_with_tls_and_logins_gives_nothing_without_credentials(tmp_path):
    from playwright.sync_api import sync_playwright

    port, scheduler, metrics = free_port(), free_port(), free_port()
    cmd = [sys.executable, "-m", "headrace.cluster.cli", "demo", "--tls", "--basic-auth", PASSWORD]
    cmd += ["--streams", "2", "--num-procs", "2", "--port", str(port), "--workdir", str(tmp_path)]
    cmd += ["--ftp-port", str(free_port()), "--scheduler-port", str(scheduler)]
    cmd += ["--dashboard-address", f"127.0.0.1:{free_port()}", "--metrics-port", str(metrics)]
    log = open(tmp_path / "demo.log", "wb")  # noqa: SIM115  (closed below)
    # An inherited BOKEH_RESOURCES=cdn (importing panel.io.pyodide sets it) must not make
    # any page load from a CDN.
    env = {**os.environ, "BOKEH_RESOURCES": "cdn"}
    demo = processes.start(cmd, env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    tls = tmp_path / "tls"
    try:
        wait_http_status(port, "/metrics", 401, demo, timeout=120)
        # Without credentials: no page, no figures, no websocket session.
        code, body, where = get(f"{base}/dashboard")
        assert code == 302 and "/login" in where and "alpha" not in body
        assert get(f"{base}/ops")[0] == 302
        code, body, _ = get(f"{base}/metrics")
        assert code == 401 and "headrace_" not in body
        wrong = base64.b64encode(b"x:wrong").decode()
        assert get(f"{base}/metrics", {"Authorization": f"Basic {wrong}"})[0] == 401
        with pytest.raises(HTTPClientError) as refused:
            asyncio_run(open_ws(f"{base}/dashboard"))
        assert refused.value.code in (401, 403)
        # With them: Prometheus' basic_auth, or the bearer token kept 0600 in the state dir.
        right = base64.b64encode(f"prom:{PASSWORD}".encode()).decode()
        wait_for(
            lambda: (
                "headrace_frames_fetched_total"
                in get(f"{base}/metrics", {"Authorization": f"Basic {right}"})[1]
            ),
            60,
            "the figures, with the basic-auth credentials",
        )
        token_file = tmp_path / "state" / "metrics-token"
        token = token_file.read_text().strip()
        assert get(f"{base}/metrics", {"Authorization": f"Bearer {token}"})[0] == 200
        for secret in (token_file, tmp_path / "state" / "cookie-secret", tls / "key.pem"):
            assert stat.S_IMODE(secret.stat().st_mode) == 0o600, secret
        # The cluster speaks TLS only: a client without a certificate is refused...
        address = f"tls://127.0.0.1:{scheduler}"
        code = subprocess.run(
            [sys.executable, "-c", NO_CERT, address, str(tls / "ca.pem")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert code.returncode == 0, code.stdout + code.stderr
        # ... and one with it reads every stream's health.
        files = ["--tls-ca-file", tls / "ca.pem", "--tls-cert", tls / "cert.pem"]
        files += ["--tls-key", tls / "key.pem"]
        status = subprocess.run(
            [
                sys.executable,
                "-m",
                "headrace.cluster.cli",
                "status",
                "--scheduler",
                address,
                "--json",
                *files,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        streams = json.loads(status.stdout)["streams"]
        assert status.returncode == 0 and {s["stream"] for s in streams} == {
            "alpha",
            "beta",
            "pumps",
        }

        # A browser that logs in, on a network where only this machine answers.
        with sync_playwright() as playwright:
            browser = chromium(playwright)
            try:
                context = browser.new_context()
                outside: list[str] = []

                def only_local(route):
                    host = route.request.url.split("/")[2].split(":")[0]
                    if host in ("127.0.0.1", "localhost"):
                        route.continue_()
                    else:
                        outside.append(route.request.url)
                        route.abort()

                context.route("**/*", only_local)
                page = context.new_page()
                page.goto(f"{base}/dashboard", wait_until="load")
                page.fill("input[name=username]", "viewer")
                page.fill("input[name=password]", PASSWORD)
                page.click("button[type=submit], input[type=submit]")
                page.goto(f"{base}/dashboard", wait_until="load")
                first = wait_for(
                    lambda: (s := page.evaluate(PLOT_STATE, "alpha")) and s["rows"] > 0 and s,
                    60,
                    "the live plot after logging in",
                )
                second = wait_for(
                    lambda: (
                        (s := page.evaluate(PLOT_STATE, "alpha"))
                        and (s["rows"] > first["rows"] or s["last"] > first["last"])
                        and s
                    ),
                    30,
                    "the live plot to grow",
                )
                page.screenshot(path=str(tmp_path / "dashboard-offline.png"))
                page.goto(f"{base}/ops", wait_until="load")
                page.wait_for_timeout(3000)  # time for any request to leave the machine
                page.screenshot(path=str(tmp_path / "ops-offline.png"))
                styled = page.evaluate(
                    "() => [...document.styleSheets].length + document.adoptedStyleSheets.length"
                )
            finally:
                browser.close()
    finally:
        processes.stop(demo)
        log.close()
    assert second["rows"] > first["rows"] or second["last"] > first["last"], (first, second)
    assert outside == [], outside  # nothing asked of the internet
    assert styled > 0
    text = (tmp_path / "demo.log").read_text(errors="replace")
    assert PASSWORD not in text and token not in text


NO_CERT = """
import socket, ssl, sys, tempfile
from distributed import Client
from distributed.security import Security
from headrace.cluster.security.certs import make_certs
address, ca = sys.argv[1:]
host, port = address.removeprefix("tls://").rsplit(":", 1)
# TLS that trusts the cluster's CA, but shows no certificate: the handshake is refused.
ctx = ssl.create_default_context(cafile=ca)
try:
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=host) as tls:
            tls.sendall(b"x")
            if tls.recv(1):
                sys.exit("the scheduler talked to a client without a certificate")
except (ssl.SSLError, ConnectionError) as exc:
    print("no certificate: refused,", type(exc).__name__)
# A certificate from another CA: refused too.
other = make_certs(tempfile.mkdtemp())
security = Security(tls_ca_file=ca, tls_client_cert=str(other.cert),
                    tls_client_key=str(other.key), require_encryption=True)
try:
    Client(address, security=security, timeout=5)
except (OSError, TimeoutError) as exc:
    print("other CA: refused,", type(exc).__name__)
else:
    sys.exit("a client with another CA's certificate was let in")
"""


def asyncio_run(coro):
    import asyncio

    return asyncio.run(coro)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_page_from_another_origin_cannot_open_a_session(tmp_path, cluster_options):
    with (
        LocalCluster(**cluster_options) as cluster,
        publishing(Publisher("origin", interval=0.2), cluster.scheduler_address),
        headrace_serve(cluster.scheduler_address, 1, tmp_path / "panel.log") as (proc, port),
    ):
        wait_http(port, "/metrics", 60, proc)
        url = f"http://127.0.0.1:{port}/dashboard"
        asyncio_run(open_ws(url, origin=f"http://127.0.0.1:{port}"))  # its own page: fine
        for origin in ("http://evil.example", f"http://evil.example:{port}", "null"):
            with pytest.raises(HTTPClientError) as refused:
                asyncio_run(open_ws(url, origin=origin))
            assert refused.value.code == 403, origin


def test_binding_beyond_loopback_needs_the_origins_named(tmp_path):
    cmd = [sys.executable, "-m", "headrace.cluster.cli", "serve", "--address", "0.0.0.0"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 2 and "--allow-websocket-origin" in done.stderr, done.stderr


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_logins_survive_a_restart_of_the_panel_processes(tmp_path, cluster_options):
    state = tmp_path / "state"
    access = Access(basic_auth=PASSWORD, state_dir=state)
    with LocalCluster(**cluster_options) as cluster:
        cookie = None
        for run in range(2):
            with headrace_serve(
                cluster.scheduler_address, 1, tmp_path / f"panel{run}.log", access=access
            ) as (proc, port):
                wait_http_status(port, "/metrics", 401, proc)
                if cookie is None:
                    cookie = login(port)
                code, _, _ = get(f"http://127.0.0.1:{port}/metrics", {"Cookie": cookie})
                assert code == 200, f"run {run}: the cookie of the first run was refused"
    assert stat.S_IMODE((state / "cookie-secret").stat().st_mode) == 0o600


def wait_http_status(port: int, path: str, status: int, proc, timeout: float = 60) -> None:
    def up() -> bool:
        assert proc.poll() is None, f"headrace serve exited with {proc.returncode}"
        try:
            return get(f"http://127.0.0.1:{port}{path}")[0] == status
        except OSError:
            return False

    wait_for(up, timeout, f"{path} answering {status}")


def login(port: int) -> str:
    """Log in through Panel's form; the session cookie it sets."""
    data = f"username=viewer&password={PASSWORD}".encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/login", data=data)

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    try:
        urllib.request.build_opener(NoRedirect).open(request, timeout=10)
    except urllib.error.HTTPError as e:
        cookies = e.headers.get_all("Set-Cookie") or []
    return "; ".join(c.split(";", 1)[0] for c in cookies)
