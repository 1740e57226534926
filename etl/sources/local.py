"""Local (or mounted) log files: :class:`FileSource`."""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path
from typing import Any

from headrace.etl.sources.base import BeyondEnd, Chunk, Cursor, SourceError, Stat, TailOptions
from headrace.etl.sources.rotation import advance


class FileSource:
    """A log file on a local (or mounted) file system.

    ``options`` are :class:`TailOptions`' (``rotated``, ``start``, ``max_first_read``,
    ``max_line``).
    """

    def __init__(self, path: str | os.PathLike, **options: Any) -> None:
        self.path = os.fspath(path)
        self.display = str(Path(self.path).absolute())
        self.server = "file://"  # streams read together: every local file
        try:
            self.options = TailOptions.of(**options)
        except ValueError as e:
            raise ValueError(f"{self.display}: {e}") from None
        self.rotated = self.options.rotated_path(self.path, os.path)

    def __repr__(self) -> str:
        return f"FileSource({self.display!r})"

    def read(self, cursor: Cursor, limit: int | None = None) -> Chunk:
        try:
            return advance(
                cursor, limit, _LocalFiles(), self.path, self.rotated, self.options, self.display
            )
        except OSError as e:
            raise SourceError(f"{self.display}: {_os_problem(e)}") from e

    def close(self) -> None:
        pass  # a file is opened per read, so that a rotated file is seen at once


class _LocalFiles:
    def stat(
        self, path: str, *, required: bool = True, grown_past: int | None = None
    ) -> Stat | None:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            if required:
                raise
            return None
        # Nanoseconds: a same-size rewrite within the same second still shows.
        return Stat(st.st_size, str(st.st_mtime_ns), st.st_ino)

    def read(self, path: str, offset: int, size: int | None = None) -> bytes:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size < offset:
                raise BeyondEnd
            f.seek(offset)
            return f.read(-1 if size is None else size)

    def list(self, pattern: str) -> list[str]:
        folder, name = os.path.split(pattern)
        try:
            names = os.listdir(folder or ".")
        except FileNotFoundError:
            return []
        return [os.path.join(folder, n) for n in fnmatch.filter(names, name)]


def _os_problem(e: OSError) -> str:
    if isinstance(e, FileNotFoundError):
        return "no such file"
    return e.strerror or type(e).__name__
