"""Who may reach the dashboard: the address it binds, the origins, logins and their secrets.

Loopback (127.0.0.1) by default. Binding another address needs the websocket origins
browsers will use named (``--allow-websocket-origin``): Bokeh then refuses a session
from a page served anywhere else. Logins are Panel's own (``--basic-auth``, or
``--oauth-provider`` and friends passed through to ``panel serve``); their cookie
secret is kept in the state directory (0600) so that a restart logs nobody out, and it
reaches Panel through its environment, never a command line others can read in ``ps``.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from headrace.app import pages
from headrace.app.metrics import TOKEN_ENV

COOKIE_SECRET = "cookie-secret"
LOGIN_PAGE = Path(pages.__file__).resolve().parent / "login.html"  # nothing from the internet
METRICS_TOKEN = "metrics-token"


def kept_secret(path: Path) -> str:
    """The secret in ``path``; a new random one is written there (0600) the first time."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    value = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return value


def loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Access:
    address: str = "127.0.0.1"
    port: int = 5006
    origins: tuple[str, ...] = ()  # host[:port] browsers use, beyond localhost
    basic_auth: str | None = None  # a password, or a JSON file {user: password}
    state_dir: Path = Path(".headrace")
    metrics_token_file: str | None = None

    def check(self, extra: Sequence[str] = ()) -> None:
        """A ValueError naming the setting when the dashboard would be open to anyone."""
        named = self.origins or "--allow-websocket-origin" in extra
        if not loopback(self.address) and not named:
            raise ValueError(
                f"--address {self.address} lets other machines connect: name the origins "
                "their browsers use with --allow-websocket-origin HOST[:PORT] (the host and "
                "port in the dashboard's URL, e.g. dashboards.example.com or 10.0.0.5:5006)"
            )

    def authenticated(self, extra: Sequence[str] = ()) -> bool:
        return bool(
            self.basic_auth
            or "--oauth-provider" in extra
            or os.environ.get("PANEL_OAUTH_PROVIDER")
            or os.environ.get("PANEL_BASIC_AUTH")
        )

    def args(self, extra: Sequence[str] = ()) -> list[str]:
        """``panel serve`` arguments: the allowed origins, and the login page."""
        origins = list(self.origins)
        if loopback(self.address):
            origins += [f"localhost:{self.port}", f"127.0.0.1:{self.port}"]
        out: list[str] = []
        for origin in dict.fromkeys(origins):
            out += ["--allow-websocket-origin", origin]
        if self.basic_auth and "--basic-login-template" not in extra:
            out += ["--basic-login-template", str(LOGIN_PAGE)]
        return out

    def env(self, extra: Sequence[str] = ()) -> dict[str, str]:
        """The Panel processes' environment: the login settings and their secrets."""
        if not self.authenticated(extra):
            return {}
        env = {}
        if self.basic_auth:
            env["PANEL_BASIC_AUTH"] = self.basic_auth
        if not (os.environ.get("PANEL_COOKIE_SECRET") or "--cookie-secret" in extra):
            env["PANEL_COOKIE_SECRET"] = kept_secret(self.state_dir / COOKIE_SECRET)
        token = self.metrics_token_file or os.environ.get(TOKEN_ENV)
        if not token:
            token = str(self.state_dir / METRICS_TOKEN)
            kept_secret(Path(token))
        env[TOKEN_ENV] = str(Path(token).resolve())
        return env
