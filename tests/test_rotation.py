"""Rotation, file identity, first reads and long lines, for local files and FTP (real ones)."""

from __future__ import annotations

import ftplib
import logging
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from faultreport import record
from test_ftps import certs, ftps_server, vsftpd  # noqa: F401  (fixtures)

from headrace.etl.sources.base import CURRENT, FINISHED, ROTATED, Chunk, Cursor, Source, SourceError
from headrace.etl.sources.ftp import GROWING, FTPSource
from headrace.etl.sources.local import FileSource
from headrace.etl.sources.rotation import HEAD_SIZE
from headrace.etl.store.state import Checkpoint, StateStore

pytestmark = pytest.mark.timeout(30)


def numbered(start: int, stop: int, tag: bytes = b"line") -> bytes:
    return b"".join(b"%s %05d some payload\n" % (tag, i) for i in range(start, stop))


@pytest.fixture(params=["ftp", "vsftpd", "file"])
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def open_source(kind: str, request: pytest.FixtureRequest, ftp_root: Path) -> Iterator[Callable]:
    """``open_source(name, **options)``: a source of the parametrized kind for a root file."""
    opened: list[Source] = []

    def open_(name: str, **options) -> Source:
        if kind in ("ftp", "vsftpd"):
            server = request.getfixturevalue("ftp_server" if kind == "ftp" else "vsftpd_server")
            source: Source = FTPSource(server.url(name), **options)
        else:
            source = FileSource(ftp_root / name, **options)
        opened.append(source)
        return source

    yield open_
    for source in opened:
        source.close()


def drain(source: Source, cursor: Cursor, chunks: list[Chunk], most: int = 20) -> Cursor:
    """Read until a read changes nothing; line numbers follow on, or restart at 1."""
    for _ in range(most):
        chunk = source.read(cursor)
        assert chunk.first_line == (1 if chunk.reset else cursor.line + 1)
        chunks.append(chunk)
        if chunk.cursor == cursor:
            return cursor
        cursor = chunk.cursor
    raise AssertionError(f"still reading after {most} reads")


def data(chunks: list[Chunk]) -> bytes:
    return b"".join(c.data for c in chunks)


def test_rename_and_create_reads_the_old_files_rest_first(open_source, ftp_files, caplog):
    ftp_files.write("a.log", numbered(0, 20))
    source = open_source("a.log")
    cursor = source.read(Cursor()).cursor
    assert cursor.head == numbered(0, 20) and cursor.phase == CURRENT

    # Written, never read, then the file is rotated: renamed, and a new one started.
    ftp_files.append("a.log", numbered(20, 30) + b"cut short")
    os.rename(ftp_files.path("a.log"), ftp_files.path("a.log.1"))
    ftp_files.write("a.log", numbered(0, 5, b"new"))

    chunks: list[Chunk] = []
    with caplog.at_level(logging.INFO, logger="headrace.etl"):
        drain(source, cursor, chunks)
    rest, new = chunks[0], chunks[1]
    # The final partial line of a rotated file is complete by definition.
    assert rest.data == numbered(20, 30) + b"cut short\n"
    assert (rest.first_line, rest.reset, rest.cursor.phase) == (21, None, FINISHED)
    assert new.data == numbered(0, 5, b"new") and new.first_line == 1 and new.reset == "rotated"
    assert new.cursor.line == 5 and new.cursor.head == numbered(0, 5, b"new")
    assert data(chunks) == rest.data + new.data
    assert f"the old file from {source.rotated}, from byte {cursor.offset}" in caplog.text
    assert "WARNING" not in caplog.text


def test_rotated_while_the_new_file_is_empty_waits_for_it(open_source, ftp_files):
    # A writer may still be writing the renamed file until it opens the new one: the old
    # file is read on until the new one has bytes; its partial line waits till then.
    ftp_files.write("a.log", numbered(0, 20))
    source = open_source("a.log")
    cursor = source.read(Cursor()).cursor
    ftp_files.append("a.log", numbered(20, 22) + b"half")
    os.rename(ftp_files.path("a.log"), ftp_files.path("a.log.1"))

    chunks: list[Chunk] = []
    missing = source.read(cursor)  # no a.log at all for now: the old file's rest still comes
    assert missing.data == numbered(20, 22) and missing.cursor.phase == ROTATED
    ftp_files.write("a.log", b"")
    ftp_files.append("a.log.1", b" of a line\n" + numbered(22, 25))  # the writer, still on it
    cursor = drain(source, missing.cursor, chunks)
    assert data(chunks) == b"half of a line\n" + numbered(22, 25)
    assert cursor.phase == ROTATED

    ftp_files.append("a.log.1", b"last, no end")
    ftp_files.append("a.log", numbered(0, 3, b"new"))
    chunks = []
    drain(source, cursor, chunks)
    assert data(chunks) == b"last, no end\n" + numbered(0, 3, b"new")


def test_copytruncate_reads_the_copy_then_the_file_again(open_source, ftp_files):
    ftp_files.write("a.log", numbered(0, 20))
    source = open_source("a.log")
    cursor = source.read(Cursor()).cursor

    ftp_files.append("a.log", numbered(20, 40))
    shutil.copyfile(ftp_files.path("a.log"), ftp_files.path("a.log.1"))
    os.truncate(ftp_files.path("a.log"), 0)
    ftp_files.append("a.log", numbered(40, 45))  # the writer goes on, in the same file

    chunks: list[Chunk] = []
    cursor = drain(source, cursor, chunks)
    assert data(chunks) == numbered(20, 45)
    assert chunks[0].first_line == 21 and chunks[1].reset == "rotated"
    assert cursor.offset == len(numbered(40, 45)) and cursor.line == 5


@pytest.mark.parametrize("how", ["rename", "copytruncate"])
def test_a_rotated_pattern_finds_the_old_file_by_its_first_bytes(
    open_source, ftp_files, caplog, how
):
    # logrotate's dateext: the old file's name holds a date, so only a pattern finds it;
    # of the files matching, the one that begins as the file being read did is it.
    ftp_files.write("a.log-20261201", numbered(0, 200, b"older"))  # bigger, other bytes
    ftp_files.write("a.log", numbered(0, 20))
    ftp_files.write("a.log-20261202", numbered(0, 200, b"old"))
    source = open_source("a.log", rotated="{name}-*")
    cursor = source.read(Cursor()).cursor
    ftp_files.append("a.log", numbered(20, 30))
    if how == "rename":
        os.rename(ftp_files.path("a.log"), ftp_files.path("a.log-20261203"))
    else:
        shutil.copyfile(ftp_files.path("a.log"), ftp_files.path("a.log-20261203"))
        os.truncate(ftp_files.path("a.log"), 0)
    ftp_files.write("a.log", numbered(0, 5, b"new"))

    chunks: list[Chunk] = []
    with caplog.at_level(logging.INFO, logger="headrace.etl"):
        drain(source, cursor, chunks)
    assert data(chunks) == numbered(20, 30) + numbered(0, 5, b"new")
    assert "reading the rest of the old file from " in caplog.text
    assert "a.log-20261203, from byte" in caplog.text
    assert "WARNING" not in caplog.text


def test_a_rotated_pattern_that_matches_no_copy_says_so(open_source, ftp_files, caplog):
    ftp_files.write("a.log", numbered(0, 20))
    ftp_files.write("a.log-20261202", numbered(0, 200, b"old"))  # another file's copy
    source = open_source("a.log", rotated="{name}-*")
    cursor = source.read(Cursor()).cursor
    ftp_files.append("a.log", numbered(20, 30))
    os.rename(ftp_files.path("a.log"), ftp_files.path("gone.log"))  # out of the pattern's way
    ftp_files.write("a.log", numbered(0, 40, b"new"))

    chunks: list[Chunk] = []
    with caplog.at_level(logging.INFO, logger="headrace.etl"):
        drain(source, cursor, chunks)
    assert data(chunks) == numbered(0, 40, b"new")
    assert "the rotated file " in caplog.text and "a.log-* was not found" in caplog.text
    assert f"after byte {cursor.offset} were not read" in caplog.text


def test_rotated_file_missing_warns_and_goes_on(open_source, ftp_files, caplog):
    ftp_files.write("a.log", numbered(0, 20))
    source = open_source("a.log")
    cursor = source.read(Cursor()).cursor
    ftp_files.append("a.log", numbered(20, 25) + b"unfinished")
    os.rename(ftp_files.path("a.log"), ftp_files.path("a.log.old"))  # not "{name}.1"
    ftp_files.write("a.log", numbered(0, 40, b"new"))

    with caplog.at_level(logging.INFO, logger="headrace.etl"):
        chunk = source.read(cursor)
    assert chunk.data == numbered(0, 40, b"new") and chunk.reset == "rotated"
    warning = next(r for r in caplog.records if r.levelno == logging.WARNING)
    assert warning.getMessage() == (
        f"{source.display}: file replaced; the rotated file {source.rotated} was not found:"
        f" any bytes written to the old file after byte {cursor.offset} were not read"
    )


def test_rotated_file_of_another_file_is_not_read(open_source, ftp_files, caplog):
    ftp_files.write("a.log", numbered(0, 20))
    source = open_source("a.log")
    cursor = source.read(Cursor()).cursor
    ftp_files.write("a.log.1", numbered(0, 30, b"other"))  # same name, another file
    ftp_files.replace("a.log", numbered(0, 40, b"new"))
    with caplog.at_level(logging.INFO, logger="headrace.etl"):
        chunk = source.read(cursor)
    assert chunk.data == numbered(0, 40, b"new") and b"other" not in chunk.data
    assert f"the rotated file {source.rotated} is not the file that was being read" in caplog.text


@pytest.mark.parametrize("rotated", ["{name}.1", None])
def test_truncation_in_place_is_info(open_source, ftp_files, caplog, rotated):
    ftp_files.write("a.log", numbered(0, 20))
    source = open_source("a.log", rotated=rotated)
    cursor = source.read(Cursor()).cursor
    os.truncate(ftp_files.path("a.log"), 0)
    ftp_files.append("a.log", numbered(0, 3, b"again"))
    with caplog.at_level(logging.INFO, logger="headrace.etl"):
        chunk = source.read(cursor)
    assert chunk.reset == "truncated" and chunk.data == numbered(0, 3, b"again")
    assert f"{source.display}: file truncated, reading again from byte 0" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("how", ["replaced", "rewritten"])
def test_same_size_replacement_is_seen_without_growth(open_source, ftp_files, kind, how):
    ftp_files.write("a.log", numbered(0, 20))
    source = open_source("a.log", rotated=None)
    cursor = drain(source, Cursor(), [])
    assert source.read(cursor).transfers == 0  # idle: stat (and MDTM) only
    # MDTM counts whole seconds: the change must fall in another one. Local mtimes move
    # with the kernel's clock tick (a few ms).
    time.sleep(1.05 - time.time() % 1 if kind != "file" else 0.05)
    same_size = numbered(0, 20, b"LINE")
    if how == "replaced":
        ftp_files.replace("a.log", same_size)
    else:
        with open(ftp_files.path("a.log"), "r+b") as f:
            f.write(same_size)
    assert len(same_size) == cursor.offset

    chunk = source.read(cursor)
    assert chunk.reset in ("rotated", "truncated") and chunk.data == same_size
    assert chunk.first_line == 1 and chunk.cursor.offset == len(same_size)
    assert source.read(chunk.cursor).transfers == 0  # and then idle again


def test_a_growing_file_is_read_without_a_stat_until_its_first_idle_tick(
    open_source, ftp_files, kind, monkeypatch
):
    """FTP: once a file grew at a few ticks in a row, a tick is PASV, REST and RETR only;
    SIZE and MDTM come back with its first tick without new bytes. Local: nothing changes."""
    sent: list[str] = []
    putcmd = ftplib.FTP.putcmd
    monkeypatch.setattr(
        ftplib.FTP, "putcmd", lambda ftp, line: (sent.append(line.split()[0]), putcmd(ftp, line))
    )
    ftp_files.write("a.log", numbered(0, 5))
    source = open_source("a.log", rotated=None)
    cursor = source.read(Cursor()).cursor
    got = []
    for i in range(6):
        ftp_files.append("a.log", numbered(5 + 4 * i, 9 + 4 * i))
        sent.clear()
        chunk = source.read(cursor)
        got.append(chunk.data)
        assert chunk.transfers == 1 and chunk.first_line == cursor.line + 1
        cursor = chunk.cursor
        if kind != "file":
            assert "MDTM" not in sent and ("SIZE" in sent) == (i < GROWING), (i, sent)
    assert b"".join(got) == numbered(5, 29)
    sent.clear()
    idle = source.read(cursor)
    assert idle.data == b"" and idle.cursor.offset == cursor.offset and idle.cursor.mtime
    if kind != "file":
        assert "SIZE" in sent and "MDTM" in sent and idle.transfers == 1  # 64 bytes, once
    sent.clear()
    assert source.read(idle.cursor).transfers == 0 and "RETR" not in sent  # idle from then on
    ftp_files.append("a.log", numbered(29, 30))
    sent.clear()
    assert source.read(idle.cursor).data == numbered(29, 30)
    assert kind == "file" or "SIZE" in sent  # a stat first again, until it keeps growing


@pytest.mark.parametrize("how", ["rename", "copytruncate", "truncate"])
def test_a_file_read_without_a_stat_is_followed_across_a_rotation(open_source, ftp_files, how):
    """A file read first (it kept growing) that is rotated, replaced by a larger file or
    truncated: its 64 bytes before the cursor tell, and the stat's path takes over."""
    ftp_files.write("a.log", numbered(0, 5))
    source = open_source("a.log")
    cursor = source.read(Cursor()).cursor
    for i in range(GROWING + 1):
        ftp_files.append("a.log", numbered(5 + i, 6 + i))
        cursor = source.read(cursor).cursor
    ftp_files.append("a.log", numbered(20, 30))  # written, not read yet
    path = ftp_files.path("a.log")
    if how == "rename":
        os.rename(path, ftp_files.path("a.log.1"))
        new = numbered(0, 100, b"new")  # larger than what was read of the old one
        ftp_files.write("a.log", new)
    else:
        if how == "copytruncate":
            shutil.copyfile(path, ftp_files.path("a.log.1"))
        os.truncate(path, 0)
        new = numbered(40, 42)
        ftp_files.append("a.log", new)
    chunks: list[Chunk] = []
    drain(source, cursor, chunks)
    lost = how == "truncate"  # no rotated copy: what was not read is gone, said so
    assert data(chunks) == (b"" if lost else numbered(20, 30)) + new
    assert chunks[-2 if not lost else 0].reset in ("rotated", "truncated")


def test_start_end_takes_nothing_but_remembers_the_end(open_source, ftp_files):
    existing = numbered(0, 100) + b"a line being writ"
    ftp_files.write("a.log", existing)
    source = open_source("a.log", start="end")
    first = source.read(Cursor())
    assert first.data == b"" and first.cursor.phase == CURRENT
    # From the last line boundary: the line being written is read whole.
    assert first.cursor.offset == len(numbered(0, 100))
    assert first.cursor.head == existing[:HEAD_SIZE]
    ftp_files.append("a.log", b"ten\nnext\n")
    assert source.read(first.cursor).data == b"a line being written\nnext\n"

    ftp_files.write("b.log", b"")  # an empty file: what it gets later is read
    empty = open_source("b.log", start="end")
    cursor = empty.read(Cursor()).cursor
    ftp_files.append("b.log", b"1\n")
    assert empty.read(cursor).data == b"1\n"


def test_max_first_read_takes_the_last_bytes(open_source, ftp_files, caplog):
    existing = numbered(0, 2000)  # 48,000 bytes
    ftp_files.write("a.log", existing)
    source = open_source("a.log", max_first_read=1000)
    with caplog.at_level(logging.INFO, logger="headrace.etl"):
        first = source.read(Cursor())
    # The last 1,000 bytes, from their first line boundary.
    skipped = existing.index(b"\n", len(existing) - 1000) + 1
    assert first.data == existing[skipped:] == numbered(1959, 2000)
    assert first.cursor.head == existing[:HEAD_SIZE] and first.first_line == 1
    assert f"{skipped} bytes skipped (max_first_read 1000)" in caplog.text
    assert source.read(Cursor(), limit=first.cursor.offset) == first  # a replay: the same
    ftp_files.append("a.log", numbered(2000, 2001))
    assert source.read(first.cursor).data == numbered(2000, 2001)

    whole = open_source("a.log", max_first_read=0)
    assert whole.read(Cursor()).data == existing + numbered(2000, 2001)


def test_a_one_megabyte_line_is_one_line(open_source, ftp_files, caplog):
    ftp_files.write("a.log", b"before\n")
    source = open_source("a.log")
    cursor = source.read(Cursor()).cursor
    line = bytes(range(33, 123)) * (1_000_000 // 90)
    for i in range(0, len(line), 250_000):
        ftp_files.append("a.log", line[i : i + 250_000])
        chunk = source.read(cursor)
        assert chunk.data == b""
        cursor = chunk.cursor
    ftp_files.append("a.log", b"\nafter\n")
    with caplog.at_level(logging.WARNING, logger="headrace.etl"):
        chunk = source.read(cursor)
    assert chunk.data == line + b"\nafter\n" and chunk.first_line == 2
    assert not caplog.records


def test_a_cr_only_file_is_bounded_by_max_line(open_source, ftp_files, caplog):
    ftp_files.write("a.log", b"")
    source = open_source("a.log", max_line="64KiB")
    cursor = source.read(Cursor()).cursor
    written, got = b"", []
    with caplog.at_level(logging.WARNING, logger="headrace.etl"):
        for i in range(6):
            more = b"".join(
                b"2026-01-01T00:00:%02dZ %d\r" % (j % 60, j) for j in range(i, 12000, 6)
            )
            ftp_files.append("a.log", more)
            written += more
            chunk = source.read(cursor)
            got.append(chunk.data)
            cursor = chunk.cursor
            assert len(cursor.tail) <= 65536
    lines = b"".join(got).split(b"\n")[:-1]
    assert lines and all(len(x) == 65536 for x in lines)
    assert b"".join(lines) + cursor.tail == written
    assert cursor.line == len(lines)
    assert f"{source.display}: line 1 has no end of line after" in caplog.text


def test_replays_give_the_same_chunks_across_a_rotation(open_source, ftp_files):
    ftp_files.write("a.log", numbered(0, 20))
    source = open_source("a.log")
    cursor = source.read(Cursor()).cursor
    ftp_files.append("a.log", numbered(20, 30))
    os.rename(ftp_files.path("a.log"), ftp_files.path("a.log.1"))
    ftp_files.write("a.log", numbered(0, 5, b"new"))

    rest = source.read(cursor)
    ftp_files.append("a.log", numbered(5, 9, b"new"))
    new = source.read(rest.cursor)
    ftp_files.append("a.log", numbered(9, 12, b"new"))
    # As the loop replays a tick after a crash: the old cursor, the offset it had reached.
    assert source.read(cursor, limit=rest.cursor.offset).data == rest.data
    again = source.read(rest.cursor, limit=new.cursor.offset)
    assert (again.data, again.cursor.offset) == (new.data, new.cursor.offset)
    assert again.data == numbered(0, 9, b"new")


@pytest.mark.timeout(60)
def test_restart_in_the_middle_of_a_rotation_keeps_exactly_once(open_source, ftp_files, tmp_path):
    ftp_files.write("a.log", numbered(0, 20))
    store = StateStore(tmp_path / "state")
    cursor = open_source("a.log").read(Cursor()).cursor
    store.save("s", Checkpoint(cursor, next_seq=2), time.time())
    got = [numbered(0, 20)]

    ftp_files.append("a.log", numbered(20, 30) + b"partial ")
    os.rename(ftp_files.path("a.log"), ftp_files.path("a.log.1"))
    ftp_files.write("a.log", b"")  # created, not yet written: the old file is not finished
    chunk = open_source("a.log").read(store.load("s").cursor)
    assert chunk.cursor.phase == ROTATED
    got.append(chunk.data)
    store.save("s", Checkpoint(chunk.cursor, next_seq=3), time.time())
    store.close()

    # A new process: a new store object on the same directory, a new source.
    store = StateStore(tmp_path / "state")
    loaded = store.load("s").cursor
    assert loaded == chunk.cursor
    ftp_files.append("a.log.1", b"line\n")
    ftp_files.append("a.log", numbered(0, 10, b"new"))
    chunks: list[Chunk] = []
    cursor = drain(open_source("a.log"), loaded, chunks)
    store.save("s", Checkpoint(cursor, next_seq=4), time.time())
    got += [c.data for c in chunks]
    assert b"".join(got) == numbered(0, 30) + b"partial line\n" + numbered(0, 10, b"new")
    assert store.load("s").cursor == cursor
    store.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("server", ["pyftpdlib", "vsftpd"])
def test_rotation_over_ftps(server, request, ftp_root):
    # The rotated file's first bytes come in a protected RETR cut short (no TLS shutdown
    # on it): the server answers 426 or 226, and the control connection goes on.
    if server == "vsftpd":
        found = request.getfixturevalue("vsftpd")
        root, url, ca = found.root, found.url("a.log"), found.certs.ca
    else:
        found = request.getfixturevalue("ftps_server")
        root, url, ca = ftp_root, found.url("a.log"), request.getfixturevalue("certs").ca
    path = root / "a.log"
    path.write_bytes(numbered(0, 5000))
    source = FTPSource(url, ca_file=str(ca))
    try:
        cursor = source.read(Cursor()).cursor
        with open(path, "ab") as f:
            f.write(numbered(5000, 5010))
        os.rename(path, root / "a.log.1")
        path.write_bytes(numbered(0, 3, b"new"))
        chunks: list[Chunk] = []
        cursor = drain(source, cursor, chunks)
        assert data(chunks) == numbered(5000, 5010) + numbered(0, 3, b"new")
        with open(path, "ab") as f:
            f.write(b"more\n")
        assert source.read(cursor).data == b"more\n"
        if server == "pyftpdlib":
            assert found.logins == 1
    finally:
        source.close()


def test_state_from_before_heads_loads_and_gets_one(ftp_files, tmp_path):
    ftp_files.write("a.log", numbered(0, 60))
    state = tmp_path / "state"
    state.mkdir()
    db = sqlite3.connect(state / "state.sqlite")
    db.execute(  # the schema before totals, heads and phases were kept
        "CREATE TABLE streams (name TEXT PRIMARY KEY, offset INTEGER NOT NULL, line INTEGER"
        " NOT NULL, tail BLOB NOT NULL, fingerprint BLOB NOT NULL, next_seq INTEGER NOT NULL,"
        " carry BLOB, pending_until INTEGER, updated REAL NOT NULL)"
    )
    offset = len(numbered(0, 50))
    fp = numbered(0, 50)[-64:]
    db.execute("INSERT INTO streams VALUES ('s', ?, 50, x'', ?, 7, NULL, NULL, 0)", (offset, fp))
    db.commit()
    db.close()

    store = StateStore(state)
    checkpoint = store.load("s")
    assert checkpoint.next_seq == 7 and checkpoint.cursor == Cursor(
        offset, 50, b"", fp, phase=CURRENT
    )
    chunk = FileSource(ftp_files.path("a.log")).read(checkpoint.cursor)
    assert chunk.data == numbered(50, 60) and chunk.first_line == 51
    assert chunk.cursor.head == numbered(0, 60)[:HEAD_SIZE]  # filled in, once
    store.save("s", Checkpoint(chunk.cursor, 8), time.time())
    assert store.load("s").cursor == chunk.cursor
    store.close()


class RotatingWriter(threading.Thread):
    """Appends numbered lines at ``rate`` per second; rotates the file as told, itself.

    ``rotations``: (seconds after start, "rename" or "copytruncate"). The previous
    rotated file is moved to ``.2`` first, as logrotate does; with ``dateext`` each
    rotated file is named for its day instead (``live.log-20261201``, ...).
    """

    def __init__(
        self, path: Path, rate: float, duration: float, rotations, dateext: bool = False
    ) -> None:
        super().__init__(daemon=True)
        self.path, self.rate, self.duration, self.dateext = path, rate, duration, dateext
        self.rotations = sorted(rotations)
        self.written: list[bytes] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as e:
            self.error = e

    def _run(self) -> None:
        path, one, two = self.path, Path(f"{self.path}.1"), Path(f"{self.path}.2")
        f = open(path, "ab", buffering=0)  # noqa: SIM115
        start = time.monotonic()
        while (now := time.monotonic() - start) < self.duration:
            due = int(now * self.rate) - len(self.written)
            lines = [b"%07d written at %.4f\n" % (len(self.written) + i, now) for i in range(due)]
            f.write(b"".join(lines))
            self.written += lines
            if self.rotations and now >= self.rotations[0][0]:
                _, how = self.rotations.pop(0)
                if self.dateext:
                    one = Path(f"{path}-2026120{len(self.rotations) + 1}")
                elif one.exists():
                    os.replace(one, two)
                if how == "rename":
                    f.close()
                    os.rename(path, one)
                    f = open(path, "ab", buffering=0)  # noqa: SIM115
                else:  # copytruncate: the same file goes on, from byte 0 (O_APPEND)
                    shutil.copyfile(path, one)
                    os.truncate(path, 0)
            time.sleep(0.002)  # the writer's pace
        f.close()


@pytest.mark.fault  # a row of the reliability table
@pytest.mark.timeout(60)
@pytest.mark.parametrize("naming", ["numbered", "dateext"])
def test_nothing_lost_or_repeated_while_a_writer_rotates(
    open_source, ftp_files, caplog, kind, naming
):
    path = ftp_files.write("live.log", b"")
    dateext = naming == "dateext"
    source = open_source("live.log", **({"rotated": "{name}-*"} if dateext else {}))
    rotations = [(0.8, "rename"), (1.9, "copytruncate")]
    writer = RotatingWriter(path, 1000, 3.0, rotations, dateext=dateext)
    got: list[bytes] = []
    cursor, resets, errors = Cursor(), [], 0
    caplog.set_level(logging.INFO, logger="headrace.etl")
    writer.start()
    while writer.is_alive():
        try:
            chunk = source.read(cursor)
        except SourceError:
            errors += 1  # e.g. a RETR cut short by the file's rename: retried, same cursor
        else:
            assert chunk.first_line == (1 if chunk.reset else cursor.line + 1)
            got.append(chunk.data)
            resets += [chunk.reset] if chunk.reset else []
            cursor = chunk.cursor
        time.sleep(0.1)  # the reader's pace: a read every 0.1 s, as ticks do
    writer.join()
    assert writer.error is None
    chunks: list[Chunk] = []
    drain(source, cursor, chunks)
    got += [c.data for c in chunks]

    written = b"".join(writer.written)
    assert len(writer.written) > 2500
    read = b"".join(got)
    assert read.count(b"\n") == len(writer.written)  # not one line lost or repeated
    assert read == written  # and all in order
    assert resets == ["rotated", "rotated"] and errors <= 2
    # Both times the old file's rest came from its rotated copy.
    assert caplog.text.count("reading the rest of the old file from") == 2
    where = {"ftp": "pyftpdlib", "vsftpd": "vsftpd", "file": "a local file"}[kind]
    record(
        "log rotation",
        f"rename-and-create, then copytruncate, of {where} while 1,000 lines/s are written"
        + (" (dateext names, found by the pattern {name}-*)" if dateext else ""),
        written=len(writer.written),
        published=read.count(b"\n"),
        open=0,
        lost=len(writer.written) - read.count(b"\n"),
        duplicated=0,
        rotations_seen=len(resets),
    )
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
