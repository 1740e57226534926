"""The demo's data: log lines like the field's, and a thread that appends them to files.

Used by the demo, the tests and the benchmarks. A demo line is an ISO-8601 UTC timestamp with
microseconds and a value, e.g. ``2026-11-23T09:17:02.123456Z 0.103412``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

__all__ = ["KEYED_PATTERN", "LINE_FORMAT", "LogWriter", "format_line", "keyed_line", "sample_value"]

LINE_FORMAT = "{time:%Y-%m-%dT%H:%M:%S.%f}Z {value:.6f}\n"


def format_line(t: float, value: float) -> bytes:
    """One demo line for the Unix time ``t``."""
    return LINE_FORMAT.format(time=datetime.fromtimestamp(t, UTC), value=value).encode()


KEYED_FORMAT = "{time:%Y-%m-%dT%H:%M:%S.%f}Z {key} {value:.6f}\n"
KEYED_PATTERN = r"^(?P<time>\S+)\s+(?P<key>\S+)\s+(?P<value>\S+)$"  # parses KEYED_FORMAT


def keyed_line(t: float, key: str, value: float) -> bytes:
    """One line of a file that carries several series, told apart by ``key``."""
    return KEYED_FORMAT.format(time=datetime.fromtimestamp(t, UTC), key=key, value=value).encode()


def sample_value(rng: np.random.Generator) -> float:
    """Noise around 0.1 with rare spikes, in [0, 1]: the spikes are what viewers look for."""
    value = rng.normal(0.1, 0.01)
    if rng.random() < 0.002:
        value += 0.5
    return float(min(max(value, 0.0), 1.0))


class LogWriter:
    """A thread appending demo lines to files at ``rate`` lines per second each.

    Lines are written in batches driven by the wall clock, so the average rate
    holds even when the thread cannot wake up once per line (1000+ lines/s).
    The files stay open: a file replaced under the writer is not followed.
    """

    def __init__(
        self,
        paths: Iterable[str | Path],
        rate: float = 40.0,
        seed: int | None = None,
        flush_each_line: bool = True,
        keep: bool = False,
        malformed_every: int = 0,
        keys: dict[str | Path, list[str]] | None = None,
    ) -> None:
        self.paths = [Path(p) for p in paths]
        # Files whose lines carry a key, cycling through these (KEYED_FORMAT).
        self.keys = {Path(p): k for p, k in (keys or {}).items()}
        # Every n-th line of a file does not parse (0: none), for the malformed-line paths.
        self.malformed_every = malformed_every
        self.malformed: dict[Path, list[int]] = {p: [] for p in self.paths}  # their numbers
        self.rate = rate
        self.flush_each_line = flush_each_line
        self.written: dict[Path, int] = {p: 0 for p in self.paths}
        # The exact bytes of every line written, per path, when keep=True.
        self.written_lines: dict[Path, list[bytes]] | None = (
            {p: [] for p in self.paths} if keep else None
        )
        self.error: BaseException | None = None
        self._rng = np.random.default_rng(seed)
        self._last_us = {p: 0 for p in self.paths}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def lines(self, path: str | Path) -> list[str]:
        """The lines written to ``path`` so far, without their newline (needs ``keep=True``)."""
        if self.written_lines is None:
            raise RuntimeError("LogWriter(keep=True) is needed to get the lines back")
        return [line.decode().rstrip("\n") for line in list(self.written_lines[Path(path)])]

    def start(self) -> LogWriter:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="headrace-logwriter", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> LogWriter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        # Unbuffered: every write() reaches the file at once, so readers see it.
        files = {p: open(p, "ab", buffering=0) for p in self.paths}  # noqa: SIM115
        try:
            start, done = time.time(), 0
            while not self._stop.is_set():
                due = int((time.time() - start) * self.rate) - done
                if due > 0:
                    self._write_batch(files, due)
                    done += due
                next_due = start + (done + 1) / self.rate
                self._stop.wait(min(max(next_due - time.time(), 0.0), 0.1))
        except BaseException as e:  # kept for the owner to look at: a thread cannot raise
            self.error = e
        finally:
            for f in files.values():
                f.close()

    def _write_batch(self, files: dict, count: int) -> None:
        for path, f in files.items():
            lines = [self._line(path, self.written[path] + i + 1) for i in range(count)]
            if self.flush_each_line:
                for line in lines:
                    f.write(line)
            else:
                f.write(b"".join(lines))
            if self.written_lines is not None:
                self.written_lines[path].extend(lines)
            self.written[path] += count

    def _line(self, path: Path, number: int) -> bytes:
        if self.malformed_every and number % self.malformed_every == 0:
            self.malformed[path].append(number)
            return b"not a log line %d\n" % number
        keys = self.keys.get(path)
        if keys:
            key = keys[number % len(keys)]
            level = 0.05 * keys.index(key)  # each key's series at a height of its own
            return keyed_line(self._now(path), key, level + sample_value(self._rng))
        return format_line(self._now(path), sample_value(self._rng))

    def _now(self, path: Path) -> float:
        # Lines written within the same microsecond would share a timestamp: keep
        # each file's timestamps strictly increasing (consumers sort and dedupe on time).
        us = max(round(time.time() * 1e6), self._last_us[path] + 1)
        self._last_us[path] = us
        return us / 1e6
