"""Sources against a real pyftpdlib server and real files."""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import re
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor

import psutil
import pytest
from helpers import wait_for

from headrace.cluster.demo.ftpserver import FTPServer
from headrace.cluster.demo.logwriter import LogWriter
from headrace.etl.loop.pipeline import extract
from headrace.etl.sources.base import CURRENT, Chunk, Cursor, Source, SourceError
from headrace.etl.sources.factory import make_source
from headrace.etl.sources.ftp import FTPSource
from headrace.etl.sources.local import FileSource
from headrace.etl.sources.rotation import HEAD_SIZE

pytestmark = pytest.mark.timeout(30)

LINES = b"".join(b"line %03d some payload\n" % i for i in range(20))


@pytest.fixture(params=["ftp", "file"])
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def open_source(kind: str, request: pytest.FixtureRequest, ftp_root) -> Iterator[Callable]:
    """``open_source(name)``: a source of the parametrized kind for a file in the root."""
    opened: list[Source] = []

    def open_(name: str, **options) -> Source:
        if kind == "ftp":
            server = request.getfixturevalue("ftp_server")
            source = FTPSource(server.url(name), **options)
        else:
            source = FileSource(ftp_root / name)
        opened.append(source)
        return source

    yield open_
    for source in opened:
        source.close()


def read_all(source: Source, cursor: Cursor, chunks: list[Chunk]) -> Cursor:
    """Read until nothing new; check that line numbers follow on."""
    while True:
        chunk = source.read(cursor)
        assert chunk.first_line == cursor.line + 1 or chunk.reset
        chunks.append(chunk)
        if chunk.cursor == cursor:
            return cursor
        cursor = chunk.cursor


def test_partial_line_is_kept_and_completed(open_source, ftp_files):
    ftp_files.write("a.log", b"one\ntwo\nthr")
    source = open_source("a.log")

    first = source.read(Cursor())
    assert first.data == b"one\ntwo\n"
    assert (first.first_line, first.cursor.line, first.cursor.offset) == (1, 2, 11)
    assert first.cursor.tail == b"thr"
    assert first.reset is None

    ftp_files.append("a.log", b"ee")  # still no end of line: nothing to consume
    second = source.read(first.cursor)
    assert second.data == b""
    assert second.cursor.tail == b"three" and second.cursor.offset == 13

    ftp_files.append("a.log", b"\nfour\nfi")
    third = source.read(second.cursor)
    assert third.data == b"three\nfour\n"
    assert third.first_line == 3 and third.cursor.line == 4
    assert third.cursor.tail == b"fi"
    assert third.cursor.fingerprint == b"one\ntwo\nthree\nfour\nfi"


def test_fingerprint_is_the_last_64_bytes(open_source, ftp_files):
    ftp_files.write("a.log", LINES)
    source = open_source("a.log")
    cursor = source.read(Cursor()).cursor
    assert cursor.fingerprint == LINES[-64:]
    ftp_files.append("a.log", b"x\n")
    assert source.read(cursor).cursor.fingerprint == (LINES + b"x\n")[-64:]


def test_head_is_the_files_first_bytes_up_to_1024(open_source, ftp_files):
    ftp_files.write("a.log", LINES[:100])
    source = open_source("a.log")
    cursor = source.read(Cursor()).cursor
    assert cursor.head == LINES[:100]  # fewer while the file is smaller
    more = b"".join(b"more %04d\n" % i for i in range(300))
    ftp_files.append("a.log", LINES[100:] + more)
    cursor = source.read(cursor).cursor
    assert cursor.head == (LINES + more)[:HEAD_SIZE]  # extended as it grows
    ftp_files.append("a.log", b"x\n")
    assert source.read(cursor).cursor.head == cursor.head


def test_a_copy_moved_over_the_file_reads_on(open_source, ftp_files, caplog):
    # Another inode with the same first and last bytes: the same file, read on.
    path = ftp_files.write("a.log", LINES)
    source = open_source("a.log")
    cursor = source.read(Cursor()).cursor
    copy = ftp_files.write("a.log.tmp", LINES + b"appended\n")
    os.replace(copy, path)
    with caplog.at_level(logging.INFO, logger="headrace.etl"):
        chunk = source.read(cursor)
    assert (chunk.data, chunk.reset, chunk.first_line) == (b"appended\n", None, 21)
    assert "file" not in caplog.text


def test_rotation_over_one_connection(ftp_server, ftp_files):
    # The rotated file's first bytes are read with a RETR cut short: the connection
    # goes on serving the reads that follow.
    ftp_files.write("a.log", LINES * 100)
    source = FTPSource(ftp_server.url("a.log"))
    try:
        cursor = source.read(Cursor()).cursor
        ftp_files.append("a.log", b"unread\n")
        os.rename(ftp_files.path("a.log"), ftp_files.path("a.log.1"))
        ftp_files.write("a.log", b"new\n")
        rest = source.read(cursor)
        assert rest.data == b"unread\n" and rest.transfers == 2  # its first bytes, its rest
        new = source.read(rest.cursor)
        assert new.data == b"new\n" and new.reset == "rotated"
        cursor = new.cursor
        for i in range(3):
            ftp_files.append("a.log", b"%d\n" % i)
            chunk = source.read(cursor)
            assert chunk.data == b"%d\n" % i
            cursor = chunk.cursor
        assert ftp_server.logins == 1
    finally:
        source.close()


def test_nothing_lost_or_repeated_while_a_writer_appends(open_source, ftp_files):
    path = ftp_files.write("live.log", b"")
    source = open_source("live.log")
    chunks: list[Chunk] = []
    cursor = Cursor()
    with LogWriter([path], rate=1000, seed=1) as writer:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            chunk = source.read(cursor)
            assert chunk.first_line == cursor.line + 1
            assert chunk.reset is None
            chunks.append(chunk)
            cursor = chunk.cursor
            time.sleep(0.005)  # the reader's pace: many small reads while the file grows
    assert writer.error is None
    cursor = read_all(source, cursor, chunks)

    content = path.read_bytes()
    assert b"".join(c.data for c in chunks) == content
    assert cursor.offset == len(content) and cursor.tail == b""
    assert cursor.line == writer.written[path] > 1000
    assert sum(1 for c in chunks if c.data) > 20  # it was read while growing


def test_truncated_file_is_read_again_from_the_start(open_source, ftp_files, caplog):
    ftp_files.write("a.log", LINES)
    source = open_source("a.log")
    cursor = source.read(Cursor()).cursor

    ftp_files.write("a.log", b"fresh 1\nfresh 2\npar")  # truncated, rewritten shorter
    with caplog.at_level(logging.INFO, logger="headrace.etl"):
        chunk = source.read(cursor)
    assert chunk.reset == "truncated"
    assert chunk.data == b"fresh 1\nfresh 2\n"
    assert chunk.first_line == 1
    c = chunk.cursor
    assert (c.offset, c.line, c.tail, c.fingerprint) == (19, 2, b"par", b"fresh 1\nfresh 2\npar")
    assert c.head == b"fresh 1\nfresh 2\npar"  # the file's identity now
    assert f"{source.display}: file truncated" in caplog.text

    follow = source.read(chunk.cursor)
    assert follow.data == b"" and follow.reset is None


def test_file_truncated_to_empty(open_source, ftp_files):
    ftp_files.write("a.log", LINES)
    source = open_source("a.log")
    cursor = source.read(Cursor()).cursor
    ftp_files.write("a.log", b"")
    chunk = source.read(cursor)
    assert chunk.reset == "truncated"
    assert (chunk.data, chunk.cursor.offset, chunk.cursor.head, chunk.transfers) == (b"", 0, b"", 0)
    # Not Cursor(): that would be a stream's first read, which start: end skips.
    assert chunk.cursor.phase == CURRENT


def test_rotated_file_is_read_from_the_start(open_source, ftp_files):
    ftp_files.write("a.log", LINES)
    source = open_source("a.log")
    first = source.read(Cursor())

    # Replaced by a new file that is already longer than what was read of the old one.
    new = b"".join(b"new %03d\n" % i for i in range(80))
    assert len(new) > first.cursor.offset
    ftp_files.replace("a.log", new)
    chunk = source.read(first.cursor)
    assert chunk.reset == "rotated"
    assert chunk.data == new and chunk.first_line == 1
    assert chunk.cursor.line == 80 and chunk.cursor.offset == len(new)
    assert b"line" not in chunk.data
    assert chunk.transfers == 2  # the one that found the change, then the new file


def test_one_transfer_per_read_with_data_none_without(ftp_server, ftp_files):
    ftp_files.write("a.log", b"a\n")
    source = FTPSource(ftp_server.url("a.log"))
    try:
        chunk = source.read(Cursor())
        assert chunk.transfers == 1 and ftp_server.transfers == 1
        for _ in range(5):
            idle = source.read(chunk.cursor)
            assert idle.transfers == 0 and idle.cursor == chunk.cursor
        assert ftp_server.transfers == 1

        for i in range(5):
            ftp_files.append("a.log", b"b %d\n" % i)
            chunk = source.read(chunk.cursor)
            assert chunk.data == b"b %d\n" % i and chunk.transfers == 1
        assert ftp_server.transfers == 6
        assert ftp_server.logins == 1  # one connection, reused by every read
    finally:
        source.close()


def test_file_source_counts_reads_as_transfers(ftp_files):
    path = ftp_files.write("a.log", b"a\n")
    source = FileSource(path)
    chunk = source.read(Cursor())
    assert chunk.transfers == 1
    assert source.read(chunk.cursor).transfers == 0


def test_missing_file(open_source, kind):
    source = open_source("nope.log")
    with pytest.raises(SourceError) as info:
        source.read(Cursor())
    assert "nope.log" in str(info.value)
    if kind == "ftp":
        assert "550" in str(info.value)


def test_outage_then_recovery_from_the_same_cursor(ftp_server, ftp_files, caplog):
    ftp_files.write("a.log", b"1\n2\n")
    source = FTPSource(ftp_server.url("a.log"), timeout=2)
    try:
        chunks = [source.read(Cursor())]
        cursor = chunks[0].cursor

        ftp_server.stop()
        ftp_files.append("a.log", b"3\n4\n")
        with pytest.raises(SourceError, match="Connection refused") as info:
            source.read(cursor)
        assert source.display in str(info.value)
        assert isinstance(info.value.__cause__, OSError)
        with pytest.raises(SourceError):  # no pooled connection left: a fresh attempt
            source.read(cursor)

        ftp_server.start()
        ftp_files.append("a.log", b"5\n")
        with caplog.at_level(logging.INFO, logger="headrace.etl"):
            cursor = read_all(source, cursor, chunks)
        assert b"".join(c.data for c in chunks) == b"1\n2\n3\n4\n5\n"
        assert cursor.line == 5
        assert ftp_server.logins == 2
    finally:
        source.close()


def closed_by_peer(port: int) -> bool:
    """Whether a connection of this process to ``port`` was closed by the other end."""
    return any(
        c.status == psutil.CONN_CLOSE_WAIT and c.raddr and c.raddr.port == port
        for c in psutil.Process().net_connections("tcp")
    )


@pytest.mark.parametrize("keepalive", [0.0, 60.0])
def test_connection_dropped_by_the_server_is_replaced(ftp_root, ftp_files, caplog, keepalive):
    # keepalive=0: the NOOP before the read finds the dead connection;
    # keepalive=60: the read itself fails and is retried on a new connection.
    ftp_files.write("a.log", b"1\n")
    with FTPServer(ftp_root, idle_timeout=0.3) as server:
        source = FTPSource(server.url("a.log"), keepalive=keepalive)
        try:
            cursor = source.read(Cursor()).cursor
            wait_for(
                lambda: closed_by_peer(server.port), 10, "the server to close the idle connection"
            )
            ftp_files.append("a.log", b"2\n")
            with caplog.at_level(logging.INFO, logger="headrace.etl"):
                chunk = source.read(cursor)
            assert chunk.data == b"2\n"
            assert server.logins == 2
            assert f"{source.display}: reconnecting" in caplog.text
        finally:
            source.close()


def test_password_never_shows(ftp_server, ftp_files, caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)
    ftp_files.write("a.log", b"1\n")
    url = ftp_server.url("a.log")
    assert ftp_server.password in url  # the test is meaningful

    good = FTPSource(url)
    wrong = FTPSource(url.replace(ftp_server.password, ftp_server.password + "-wrong"))
    texts = [repr(good), str(good), good.display, repr(wrong), wrong.display]
    try:
        cursor = good.read(Cursor()).cursor
        with pytest.raises(SourceError, match="530") as info:
            wrong.read(Cursor())
        errors = [info.value]

        ftp_server.stop()
        with pytest.raises(SourceError) as info:
            good.read(cursor)
        errors.append(info.value)

        with pytest.raises(ValueError) as info:
            make_source(url.replace("ftp://", "http://"))
        errors.append(info.value)
    finally:
        good.close()
        wrong.close()
    for error in errors:
        texts.append("".join(traceback.format_exception(error)))  # the chained causes too
    texts.append(caplog.text)
    for text in texts:
        assert ftp_server.password not in text
    assert "ftp://alice@127.0.0.1" in good.display


def test_password_from_environment(ftp_server, ftp_files, monkeypatch):
    ftp_files.write("a.log", b"1\n")
    url = f"ftp://{ftp_server.user}@127.0.0.1:{ftp_server.port}/a.log"
    monkeypatch.setenv("HEADRACE_TEST_FTP_PW", ftp_server.password)
    source = FTPSource(url, password_env="HEADRACE_TEST_FTP_PW")
    try:
        assert source.read(Cursor()).data == b"1\n"
    finally:
        source.close()

    monkeypatch.delenv("HEADRACE_TEST_FTP_PW")
    with pytest.raises(ValueError, match="HEADRACE_TEST_FTP_PW"):
        FTPSource(url, password_env="HEADRACE_TEST_FTP_PW")


def test_credentials_from_netrc(ftp_server, ftp_files, tmp_path):
    ftp_files.write("a.log", b"1\n")
    netrc_file = tmp_path / "netrc"
    user, password = ftp_server.user, ftp_server.password
    netrc_file.write_text(f"machine 127.0.0.1 login {user} password {password}\n")
    netrc_file.chmod(0o600)
    source = FTPSource(f"ftp://127.0.0.1:{ftp_server.port}/a.log", netrc_file=str(netrc_file))
    try:
        assert source.display == f"ftp://{ftp_server.user}@127.0.0.1:{ftp_server.port}/a.log"
        assert source.read(Cursor()).data == b"1\n"
    finally:
        source.close()


def test_anonymous_login(ftp_root, ftp_files):
    ftp_files.write("a.log", b"1\n")
    with FTPServer(ftp_root) as server:
        source = FTPSource(server.url("a.log"))
        try:
            assert source.display == f"ftp://127.0.0.1:{server.port}/a.log"
            assert source.read(Cursor()).data == b"1\n"
        finally:
            source.close()


def test_limit_replays_the_same_chunk(open_source, ftp_files):
    ftp_files.write("a.log", LINES)
    source = open_source("a.log")
    first = source.read(Cursor(), limit=50)
    assert first.cursor.offset == 50
    assert first.data + first.cursor.tail == LINES[:50]
    assert source.read(Cursor(), limit=50) == first  # a replay of the same tick

    ftp_files.append("a.log", b"more\n")
    assert source.read(first.cursor, limit=50).data == b""
    rest = source.read(first.cursor)
    assert first.data + rest.data == LINES + b"more\n"
    assert rest.first_line == first.cursor.line + 1


def test_cursor_pickles():
    cursor = Cursor(offset=12, line=3, tail=b"par", fingerprint=b"a\nb\nc\npar")
    assert pickle.loads(pickle.dumps(cursor)) == cursor


def test_source_used_in_another_process(ftp_server, ftp_files):
    # Forked after this process has a pooled connection: the child must open its own.
    ftp_files.write("a.log", b"1\n2\n")
    source = FTPSource(ftp_server.url("a.log"))
    try:
        here = source.read(Cursor())
        copy = pickle.loads(pickle.dumps(source))
        assert repr(copy) == repr(source)
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as pool:
            there = pool.submit(extract, source, Cursor()).result(timeout=20)
        assert there.data == here.data and there.cursor == here.cursor
        assert ftp_server.logins == 2
        ftp_files.append("a.log", b"3\n")
        assert source.read(here.cursor).data == b"3\n"  # the parent's connection still works
        assert ftp_server.logins == 2
    finally:
        source.close()


def test_make_source(tmp_path):
    ftp = make_source("ftp://bob:pw@example.org:2121/logs/a.log", timeout=3)
    assert isinstance(ftp, FTPSource)
    assert (ftp.host, ftp.port, ftp.user, ftp.path) == ("example.org", 2121, "bob", "logs/a.log")
    assert ftp.display == "ftp://bob@example.org:2121/logs/a.log"
    assert isinstance(make_source(str(tmp_path / "a.log")), FileSource)
    by_url = make_source(f"file://{tmp_path}/a%20b.log")
    assert isinstance(by_url, FileSource) and by_url.path == f"{tmp_path}/a b.log"
    with pytest.raises(ValueError, match=re.escape("sftp://bob:***@host/a.log")):
        make_source("sftp://bob:pw@host/a.log")
