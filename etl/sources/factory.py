"""A source from its address: ``ftp://``, ``ftps://``, ``file://`` or a plain path."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

from headrace.etl.sources.base import Source, redact_url
from headrace.etl.sources.ftp import FTPSource
from headrace.etl.sources.local import FileSource


def make_source(spec: str, **options: Any) -> Source:
    """Build a source from ``ftp://...``, ``ftps://...``, ``file://...`` or a plain path."""
    scheme = spec.split("://", 1)[0].lower() if "://" in spec else ""
    if scheme in ("ftp", "ftps"):
        return FTPSource(spec, **options)
    if scheme == "file":
        return FileSource(unquote(urlsplit(spec).path), **options)
    if not scheme:
        return FileSource(spec, **options)
    raise ValueError(
        f"unsupported source {redact_url(spec)!r}: use ftp://, ftps://, file:// or a path"
    )
