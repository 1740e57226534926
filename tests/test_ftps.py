"""FTPS sources against real servers: pyftpdlib's TLS handler, and vsftpd (session reuse)."""

from __future__ import annotations

import ftplib
import logging
import multiprocessing
import pickle
import re
import shutil
import ssl
import traceback
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
from vsftpd import Vsftpd
from vsftpd import vsftpd as run_vsftpd

from headrace.cluster.demo.ftpserver import FTPServer
from headrace.cluster.security.certs import Certs, make_certs
from headrace.etl import config
from headrace.etl.loop.pipeline import extract
from headrace.etl.sources.base import Cursor, SourceError
from headrace.etl.sources.factory import make_source
from headrace.etl.sources.ftp import FTPSource
from headrace.etl.sources.ftps import SessionReusingFTP_TLS
from headrace.etl.streams import ConfigError

pytestmark = pytest.mark.timeout(60)

USER, PASSWORD = "alice", "s3cret-PW"


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    return make_certs(tmp_path / "tls")


@pytest.fixture
def ftps_server(ftp_root: Path, certs: Certs) -> Iterator[FTPServer]:
    """pyftpdlib serving explicit FTPS only: TLS required on control and data connections."""
    with FTPServer(ftp_root, user=USER, password=PASSWORD, tls=(certs.cert, certs.key)) as server:
        yield server


def read_until_idle(source: FTPSource, cursor: Cursor, got: list[bytes]) -> Cursor:
    while True:
        chunk = source.read(cursor)
        if chunk.error is not None:
            raise AssertionError(chunk.error)
        got.append(chunk.data)
        if chunk.transfers == 0:
            return chunk.cursor
        assert chunk.first_line == cursor.line + 1
        cursor = chunk.cursor


# --- pyftpdlib's TLS_FTPHandler ---------------------------------------------------------


def test_every_byte_once_over_ftps(ftps_server, ftp_files, certs):
    source = FTPSource(ftps_server.url("a.log"), ca_file=str(certs.ca), keepalive=0.0)
    assert source.display == f"ftps://{USER}@127.0.0.1:{ftps_server.port}/a.log"
    written = [b"".join(b"2026-01-01T00:00:%02dZ %d\n" % (i % 60, i) for i in range(500))]
    ftp_files.write("a.log", written[0])
    got: list[bytes] = []
    try:
        cursor = read_until_idle(source, Cursor(), got)
        for i, more in enumerate([b"half a li", b"ne\nand more\n", b"x" * 200_000 + b"\n"]):
            ftp_files.append("a.log", more)
            written.append(more)
            cursor = read_until_idle(source, cursor, got)
            assert cursor.offset == sum(map(len, written)), i
    finally:
        source.close()
    assert b"".join(got) == b"".join(written)
    assert cursor.tail == b""
    assert ftps_server.logins == 1  # one login, kept (NOOPs before each read: keepalive 0)
    assert ftps_server.transfers == 4


def test_data_connections_are_protected(ftps_server, ftp_files, certs):
    ftp_files.write("a.log", b"1\n")
    # The server refuses a RETR over a clear-text data connection, even after a TLS login...
    client = ftplib.FTP_TLS(context=ssl.create_default_context(cafile=certs.ca), timeout=10)
    try:
        client.connect("127.0.0.1", ftps_server.port)
        client.login(USER, PASSWORD)
        with pytest.raises(ftplib.error_perm, match="SSL/TLS required on the data channel"):
            client.retrbinary("RETR a.log", lambda block: None)
    finally:
        client.close()
    assert ftps_server.transfers == 0
    # ...so the source's transfer, which it accepts, went over a protected one.
    source = FTPSource(ftps_server.url("a.log"), ca_file=str(certs.ca))
    try:
        assert source.read(Cursor()).data == b"1\n"
    finally:
        source.close()
    assert ftps_server.transfers == 1


def test_certificate_of_an_unknown_ca_is_refused(ftps_server, ftp_files, caplog):
    ftp_files.write("a.log", b"1\n")
    caplog.set_level(logging.DEBUG)
    source = FTPSource(ftps_server.url("a.log"))  # the system's trust store: not our CA
    try:
        with pytest.raises(SourceError, match="server certificate not verified") as info:
            source.read(Cursor())
    finally:
        source.close()
    message = str(info.value)
    assert message.startswith(f"{source.display}: ") and "ca_file" in message
    assert "unable to get local issuer certificate" in message
    assert isinstance(info.value.__cause__, ssl.SSLCertVerificationError)
    assert ftps_server.logins == 0  # verified before the password goes out

    caplog.clear()
    unverified = FTPSource(ftps_server.url("a.log"), verify=False)
    try:
        assert unverified.read(Cursor()).data == b"1\n"
        assert unverified.read(Cursor()).data == b"1\n"
    finally:
        unverified.close()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, caplog.text
    assert warnings[0].getMessage().startswith(f"{unverified.display}: ")
    assert "verification is off" in warnings[0].getMessage()
    assert PASSWORD not in caplog.text + "".join(traceback.format_exception(info.value))


def test_host_name_is_checked(ftp_root, ftp_files, tmp_path):
    ftp_files.write("a.log", b"1\n")
    elsewhere = make_certs(tmp_path / "other", hosts=("other.example",))
    tls = (elsewhere.cert, elsewhere.key)
    with FTPServer(ftp_root, user=USER, password=PASSWORD, tls=tls) as server:
        source = FTPSource(server.url("a.log"), ca_file=str(elsewhere.ca))
        try:
            with pytest.raises(SourceError, match=re.escape("not valid for '127.0.0.1'")):
                source.read(Cursor())
        finally:
            source.close()
        assert server.logins == 0


def test_plain_ftp_source_against_a_tls_only_server(ftps_server, ftp_files):
    ftp_files.write("a.log", b"1\n")
    url = ftps_server.url("a.log").replace("ftps://", "ftp://")
    source = FTPSource(url)
    try:
        with pytest.raises(SourceError) as info:
            source.read(Cursor())
    finally:
        source.close()
    expected = f"ftp://{USER}@127.0.0.1:{ftps_server.port}/a.log: login as 'alice' failed: "
    assert str(info.value).startswith(expected)
    assert "550 SSL/TLS required on the control channel" in str(info.value)
    assert PASSWORD not in str(info.value)


def test_ftps_source_against_a_plain_server(ftp_server, ftp_files, certs):
    ftp_files.write("a.log", b"1\n")
    url = ftp_server.url("a.log").replace("ftp://", "ftps://")
    source = FTPSource(url, ca_file=str(certs.ca))
    try:
        with pytest.raises(SourceError, match=r"ftps://alice@.*: AUTH TLS failed: .*500"):
            source.read(Cursor())
    finally:
        source.close()
    assert ftp_server.logins == 0  # no password in clear text after a refused AUTH TLS


def test_ftp_and_ftps_sources_never_share_a_connection(ftps_server, ftp_files, certs):
    ftp_files.write("a.log", b"1\n")
    url = ftps_server.url("a.log")
    secure = FTPSource(url, ca_file=str(certs.ca))
    plain = FTPSource(url.replace("ftps://", "ftp://"))
    unverified = FTPSource(url, verify=False)
    try:
        assert secure.read(Cursor()).data == b"1\n"  # a logged-in TLS connection in the pool
        with pytest.raises(SourceError, match="SSL/TLS required"):
            plain.read(Cursor())  # does not borrow it
        assert unverified.read(Cursor()).data == b"1\n"
        assert ftps_server.logins == 2  # nor does the unverified one
        assert len({secure._key(), plain._key(), unverified._key()}) == 3
    finally:
        for source in (secure, plain, unverified):
            source.close()


def test_ftps_source_travels_to_another_process(ftps_server, ftp_files, certs):
    ftp_files.write("a.log", b"1\n2\n")
    source = FTPSource(ftps_server.url("a.log"), ca_file=str(certs.ca))
    certs.ca.unlink()  # the CA was read when the source was built: a worker need not have it
    try:
        here = source.read(Cursor())
        copy = pickle.loads(pickle.dumps(source))
        assert repr(copy) == repr(source) and PASSWORD not in repr(copy)
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as pool:
            there = pool.submit(extract, copy, Cursor()).result(timeout=30)
        assert there.error is None and there.data == here.data == b"1\n2\n"
        assert ftps_server.logins == 2
    finally:
        source.close()


def test_bad_tls_options(tmp_path, certs):
    url = "ftps://bob:pw@example.org/a.log"
    with pytest.raises(ValueError, match=r"ftps://bob@example.org:21/a.log: ca_file .*not found"):
        FTPSource(url, ca_file=str(tmp_path / "nope.pem"))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(ValueError, match="no usable CA certificate"):
        FTPSource(url, ca_file=str(garbage))
    with pytest.raises(ValueError, match="verify must be true or false, got 'maybe'"):
        FTPSource(url, verify="maybe")
    with pytest.raises(ValueError, match="ca_file is given but verify is false"):
        FTPSource(url, ca_file=str(certs.ca), verify=False)
    for options in ({"ca_file": str(certs.ca)}, {"verify": False}):
        with pytest.raises(ValueError, match="apply to ftps:// sources only"):
            FTPSource(url.replace("ftps://", "ftp://"), **options)


def test_make_source_ftps(certs):
    source = make_source("ftps://bob:pw@example.org:2121/logs/a.log", ca_file=str(certs.ca))
    assert isinstance(source, FTPSource) and source.tls is not None and source.tls.verify
    assert (source.host, source.port, source.user, source.path) == (
        "example.org",
        2121,
        "bob",
        "logs/a.log",
    )
    assert source.display == "ftps://bob@example.org:2121/logs/a.log"
    assert make_source("FTPS://example.org/a.log").display == "ftps://example.org:21/a.log"
    with pytest.raises(ValueError, match="use ftp://, ftps://, file://, stream:// or a path"):
        make_source("sftp://example.org/a.log")


def test_config_ftps_stream(tmp_path, certs, monkeypatch):
    monkeypatch.setenv("HEADRACE_TEST_FTPS_PW", PASSWORD)
    (tmp_path / "conf").mkdir()
    shutil.copy(certs.ca, tmp_path / "conf" / "ca.pem")
    path = tmp_path / "conf" / "headrace.yaml"
    path.write_text(
        "streams:\n"
        "  secure:\n"
        "    source: ftps://alice@127.0.0.1:2121/app.log\n"
        "    password_env: HEADRACE_TEST_FTPS_PW\n"
        "    ca_file: ca.pem\n"  # relative to the config file
        "    verify: true\n"
        "  lab:\n"
        "    source: ftps://127.0.0.1:2121/app.log\n"
        "    verify: false\n"
    )
    secure, lab = config.load(path).streams
    assert isinstance(secure.source, FTPSource) and isinstance(lab.source, FTPSource)
    assert secure.source.tls.verify and secure.source.tls.cadata == certs.ca.read_text()
    assert secure.source._password == PASSWORD
    assert not lab.source.tls.verify


@pytest.mark.parametrize(
    ("setting", "value", "problem"),
    [
        ("verify", '"maybe"', "must be true or false, got 'maybe'"),
        ("verify", '"false"', "must be true or false, got 'false'"),
        ("ca_file", "missing.pem", "no such file: "),
        ("ca_file", "[a, b]", "must be the path of a PEM file"),
    ],
)
def test_config_bad_tls_setting(tmp_path, setting, value, problem):
    path = tmp_path / "headrace.yaml"
    path.write_text(f"streams:\n  s1:\n    source: ftps://h/a.log\n    {setting}: {value}\n")
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert str(info.value).startswith(f"{path}: stream 's1': setting '{setting}': {problem}")


def test_config_tls_setting_on_a_plain_ftp_source(tmp_path):
    path = tmp_path / "headrace.yaml"
    path.write_text("streams:\n  s1: {source: 'ftp://h/a.log', verify: false}\n")
    with pytest.raises(ConfigError, match=r"setting 'source': .*apply to ftps:// sources only"):
        config.load(path)


# --- vsftpd: requires TLS session reuse on data connections -----------------------------


@pytest.fixture
def vsftpd(tmp_path: Path, certs: Certs) -> Iterator[Vsftpd]:
    root = tmp_path / "anon"
    root.mkdir()
    with run_vsftpd(root, tmp_path, certs) as server:
        yield server


def tls_client(server: Vsftpd, cls: type[ftplib.FTP_TLS] = ftplib.FTP_TLS, context=None):
    context = context or ssl.create_default_context(cafile=server.certs.ca)
    client = cls(context=context, timeout=10)
    client.connect("127.0.0.1", server.port)
    return client


def test_vsftpd_every_byte_once(vsftpd):
    lines = b"".join(b"2026-01-01T00:00:00Z %d\n" % i for i in range(2000))
    (vsftpd.root / "a.log").write_bytes(lines)
    source = FTPSource(vsftpd.url("a.log"), ca_file=str(vsftpd.certs.ca))
    got: list[bytes] = []
    written = [lines]
    try:
        cursor = read_until_idle(source, Cursor(), got)
        for more in [b"a partial", b" line\n", b"y" * 100_000 + b"\nlast\n"]:
            vsftpd.append("a.log", more)
            written.append(more)
            cursor = read_until_idle(source, cursor, got)
    finally:
        source.close()
    assert b"".join(got) == b"".join(written)
    assert cursor.offset == sum(map(len, written)) and cursor.tail == b""


def test_vsftpd_refuses_data_connections_without_session_reuse(vsftpd):
    (vsftpd.root / "a.log").write_bytes(b"1\n")
    client = tls_client(vsftpd)
    try:
        client.login()
        client.prot_p()
        with pytest.raises(ftplib.error_perm, match="522 SSL connection failed: session reuse"):
            client.retrbinary("RETR a.log", lambda block: None)
    finally:
        client.close()


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_vsftpd_data_connections_resume_the_session(vsftpd, version):
    (vsftpd.root / "a.log").write_bytes(b"1\n")
    context = ssl.create_default_context(cafile=vsftpd.certs.ca)
    context.minimum_version = context.maximum_version = version
    client = tls_client(vsftpd, SessionReusingFTP_TLS, context)
    try:
        client.login()
        client.prot_p()
        assert client.sock.version() == version.name.replace("v1_", "v1.")
        for _ in range(3):  # the same session, resumed again and again
            with client.transfercmd("RETR a.log") as conn:
                assert conn.session_reused
                assert conn.recv(100) == b"1\n"
            assert client.voidresp().startswith("226")
    finally:
        client.close()


def test_vsftpd_tls13_ticket_comes_after_the_handshake(vsftpd):
    # Why the session is read at each data connection rather than kept from AUTH TLS.
    (vsftpd.root / "a.log").write_bytes(b"1\n")
    client = tls_client(vsftpd, SessionReusingFTP_TLS)
    try:
        client.auth()
        if client.sock.version() != "TLSv1.3":
            pytest.skip(f"negotiated {client.sock.version()}, not TLS 1.3")
        at_handshake = client.sock.session
        assert not at_handshake.has_ticket  # nothing read from the server since
        client.login()
        client.prot_p()
        assert client.sock.session.has_ticket  # taken in with the login's replies
        client.control_session = lambda: at_handshake
        with client.transfercmd("RETR a.log") as conn:
            assert not conn.session_reused
            conn.recv(100)
        with pytest.raises(ftplib.error_perm, match="522"):
            client.voidresp()
    finally:
        client.close()


def test_vsftpd_refused_session_means_a_new_login(vsftpd, monkeypatch, caplog):
    # As when the server has forgotten the session of a long-lived control connection.
    (vsftpd.root / "a.log").write_bytes(b"1\n")
    source = FTPSource(vsftpd.url("a.log"), ca_file=str(vsftpd.certs.ca))
    try:
        cursor = source.read(Cursor()).cursor
        vsftpd.append("a.log", b"2\n")
        reused = SessionReusingFTP_TLS.control_session
        calls = []

        def forgetful(self):
            calls.append(1)
            return None if len(calls) == 1 else reused(self)

        monkeypatch.setattr(SessionReusingFTP_TLS, "control_session", forgetful)
        with caplog.at_level(logging.INFO, logger="headrace.etl"):
            chunk = source.read(cursor)
        assert chunk.data == b"2\n" and chunk.first_line == 2
        assert f"{source.display}: reconnecting (DataSessionRefused: 522" in caplog.text
    finally:
        source.close()
