"""Debian's vsftpd as a test server: plain FTP, or FTPS that requires TLS session reuse.

A second FTP server implementation beside pyftpdlib (``cluster/ftpserver.py``): what the
sources do must not depend on one server's answers (SIZE, MDTM, REST, passive replies).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from helpers import wait_for
from ports import free_port

from headrace.cluster import processes
from headrace.cluster.security.certs import Certs

VSFTPD = Path("/usr/sbin/vsftpd")


@dataclass
class Vsftpd:
    port: int
    root: Path
    certs: Certs | None
    conf: Path
    log: Path
    proc: subprocess.Popen | None = None

    def url(self, name: str) -> str:
        scheme = "ftps" if self.certs is not None else "ftp"
        return f"{scheme}://127.0.0.1:{self.port}/{name}"  # anonymous

    def append(self, name: str, data: bytes) -> None:
        with open(self.root / name, "ab") as f:
            f.write(data)

    def start(self) -> Vsftpd:
        """Start it (again) on its port and wait until it accepts connections."""
        with open(self.log, "ab") as log:
            proc = processes.start([str(VSFTPD), str(self.conf)], stdout=log, stderr=log)
        self.proc = proc

        def listening() -> bool:
            if proc.poll() is not None:
                raise AssertionError(
                    f"vsftpd exited with {proc.returncode}: {self.log.read_text()}"
                )
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            except OSError:
                return False
            return True

        wait_for(listening, 20, f"vsftpd on :{self.port}")
        return self

    def stop(self) -> None:
        """Stop it and every session it runs, as ``systemctl stop`` does.

        Each session is a process in a session of its own (vsftpd calls ``setsid``), so
        stopping the listener alone leaves open connections served.
        """
        if self.proc is not None:
            processes.stop(self.proc)
            self.proc = None
        for proc in psutil.process_iter(["cmdline"]):
            if str(self.conf) in (proc.info["cmdline"] or []):
                with contextlib.suppress(psutil.Error):
                    proc.kill()


def _tls(certs: Certs) -> list[str]:
    return [
        "ssl_enable=YES",
        "allow_anon_ssl=YES",
        "require_ssl_reuse=YES",
        "force_anon_logins_ssl=YES",
        "force_anon_data_ssl=YES",
        "force_local_logins_ssl=YES",
        "force_local_data_ssl=YES",
        f"rsa_cert_file={certs.cert}",
        f"rsa_private_key_file={certs.key}",
        # Its default, DES-CBC3-SHA, leaves TLS 1.2 no cipher in common with Python's
        # defaults (TLS 1.3's suites are configured apart).
        "ssl_ciphers=HIGH",
    ]


def config(
    root: Path, empty: Path, port: int, data_ports: tuple[int, int], certs: Certs | None = None
) -> str:
    """vsftpd's configuration: ``root`` read-only to anonymous users on 127.0.0.1:``port``,
    passive data connections on ``data_ports`` (a range: one port per session at a time)."""
    lines = [
        "listen=YES",
        "listen_ipv6=NO",
        "background=NO",
        "listen_address=127.0.0.1",
        f"listen_port={port}",
        "anonymous_enable=YES",
        "no_anon_password=YES",
        "local_enable=NO",
        "write_enable=NO",
        f"anon_root={root}",
        *(_tls(certs) if certs is not None else []),
        "pasv_enable=YES",
        f"pasv_min_port={data_ports[0]}",
        f"pasv_max_port={data_ports[1]}",
        f"secure_chroot_dir={empty}",
        "seccomp_sandbox=NO",  # its seccomp filter fails in some containers
        "xferlog_enable=NO",
        "",
    ]
    return "\n".join(lines)


@contextlib.contextmanager
def vsftpd(
    root: Path, work: Path, certs: Certs | None = None, passive_ports: int = 1
) -> Iterator[Vsftpd]:
    """vsftpd serving ``root`` read-only to anonymous users; FTPS only if ``certs``.

    ``passive_ports``: the size of its range of passive data ports, from a free one on.
    One serves one session at a time; sessions that transfer at once (several workers)
    each need one, or vsftpd ends a session that finds none free ("500 OOPS:
    vsf_sysutil_bind").

    Skips the test where vsftpd is absent or the test is not root (it chroots).
    """
    if not VSFTPD.exists():
        pytest.skip(f"{VSFTPD} is absent (./run test installs it as root)")
    if os.geteuid() != 0:
        pytest.skip("vsftpd needs root (it chroots)")
    # vsftpd refuses an anonymous root the ftp user could write to: root's, 0755.
    root.chmod(0o755)
    empty = work / "vsftpd-empty"
    empty.mkdir(mode=0o755, exist_ok=True)
    port, data_port = free_port(), free_port()
    conf = work / "vsftpd.conf"
    conf.write_text(config(root, empty, port, (data_port, data_port + passive_ports - 1), certs))
    server = Vsftpd(port, root, certs, conf, work / "vsftpd.out")
    try:
        yield server.start()
    finally:
        server.stop()
