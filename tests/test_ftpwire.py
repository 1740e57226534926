"""REST and RETR sent together (``ftpwire.PipelinedFTP``), against pyftpdlib and vsftpd:
the bytes from an offset, one round trip less, and a control connection that stays in
step when the server refuses the REST (and runs the RETR anyway)."""

from __future__ import annotations

import ftplib
import socket

import pytest
from conftest import FTP_PASSWORD, FTP_USER

from headrace.etl.sources.ftpwire import PipelinedFTP

DATA = b"".join(b"line %04d\n" % i for i in range(2000))  # 20 kB: more than one segment


@pytest.fixture(params=["pyftpdlib", "vsftpd"])
def login(request, ftp_root):
    """A login to either server, with ``f.log`` to read."""
    (ftp_root / "f.log").write_bytes(DATA)
    if request.param == "pyftpdlib":
        ftp = _login(request.getfixturevalue("ftp_server").port, FTP_USER, FTP_PASSWORD)
    else:
        ftp = _login(request.getfixturevalue("vsftpd_server").port, "anonymous", "")
    with ftp:
        yield ftp


def _login(port: int, user: str, password: str) -> PipelinedFTP:
    ftp = PipelinedFTP(timeout=10)
    ftp.connect("127.0.0.1", port)
    ftp.login(user, password)
    ftp.sendcmd("TYPE I")
    return ftp


class Recorded:
    """A control socket whose writes are recorded."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.writes = sock, []

    def sendall(self, data: bytes) -> None:
        self.writes.append(data)
        self.sock.sendall(data)

    def __getattr__(self, name: str):
        return getattr(self.sock, name)


def _retr(ftp: ftplib.FTP, rest: int | str | None) -> bytes:
    conn, _ = ftp.ntransfercmd("RETR f.log", rest)
    with conn:
        parts = []
        while block := conn.recv(65536):
            parts.append(block)
    ftp.voidresp()
    return b"".join(parts)


def test_the_bytes_after_an_offset_in_one_write_where_ftplib_makes_three(login):
    login.sock = recorded = Recorded(login.sock)
    assert _retr(login, 12_345) == DATA[12_345:]
    assert recorded.writes == [b"PASV\r\nREST 12345\r\nRETR f.log\r\n"]
    assert _retr(login, None) == DATA  # without REST, as ftplib does it
    assert recorded.writes[1:] == [b"PASV\r\n", b"RETR f.log\r\n"]
    assert _retr(login, 19_990) == DATA[19_990:]


def test_a_refused_pasv_is_raised_and_the_connection_stays_in_step_or_closes(login):
    login.sendcmd("EPSV ALL")  # from now on the server refuses PASV (RFC 2428)
    with pytest.raises(ftplib.error_perm, match=r"^5"):
        login.ntransfercmd("RETR f.log", 10)
    if login.welcome.startswith("220 headrace demo"):
        # pyftpdlib starts the RETR anyway (150) and waits for a data connection: closed.
        assert login.sock is None
    else:
        # vsftpd refuses it (425): the next reply is NOOP's.
        assert login.sendcmd("NOOP").startswith("200")


def test_a_data_connection_that_cannot_be_made_closes_the_control_connection(login, monkeypatch):
    def refused(*_):
        raise ConnectionRefusedError("refused")

    monkeypatch.setattr(login, "_data_connection", refused)  # a fault not provoked here
    with pytest.raises(ConnectionRefusedError):
        login.ntransfercmd("RETR f.log", 10)
    # The server waits for the data connection before it reads another command.
    assert login.sock is None


def test_a_refused_rest_is_raised_and_the_connection_stays_in_step(ftp_server, ftp_root):
    (ftp_root / "f.log").write_bytes(DATA)
    # pyftpdlib refuses a REST that is not a number (vsftpd takes it as 0).
    with _login(ftp_server.port, FTP_USER, FTP_PASSWORD) as ftp:
        with pytest.raises(ftplib.error_perm, match=r"^501"):
            _retr(ftp, "not-a-number")
        # The RETR the server ran anyway was read and cut short: the next replies are ours.
        assert ftp.size("f.log") == len(DATA)
        assert _retr(ftp, 100) == DATA[100:]


def test_a_refused_command_after_rest_is_raised_and_the_connection_stays_in_step(login):
    with pytest.raises(ftplib.error_perm, match=r"^550"):
        login.ntransfercmd("RETR missing.log", 10)
    assert _retr(login, 10) == DATA[10:]


def test_line_breaks_in_a_command_are_refused(login):
    with pytest.raises(ValueError, match="newline"):
        login.ntransfercmd("RETR f.log\r\nDELE f.log", 10)
    assert login.size("f.log") == len(DATA)
