"""A source from its address: ``ftp://``, ``ftps://``, ``file://``, ``stream://`` or a path."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

from headrace.etl.sources.base import Source, redact_url
from headrace.etl.sources.ftp import FTPSource
from headrace.etl.sources.local import FileSource
from headrace.etl.sources.streams import SCHEME, StreamsSource, parse_inputs


def make_source(spec: str, **options: Any) -> Source:
    """Build a source from ``ftp://...``, ``ftps://...``, ``file://...``, ``stream://name``
    (other streams' frames: a derived stream) or a plain path."""
    scheme = spec.split("://", 1)[0].lower() if "://" in spec else ""
    if spec.startswith(SCHEME):
        if options:
            raise ValueError(f"{spec!r} reads frames: it takes no {', '.join(sorted(options))}")
        return StreamsSource(parse_inputs(spec))
    if scheme in ("ftp", "ftps"):
        return FTPSource(spec, **options)
    if scheme == "file":
        return FileSource(unquote(urlsplit(spec).path), **options)
    if not scheme:
        return FileSource(spec, **options)
    raise ValueError(
        f"unsupported source {redact_url(spec)!r}: "
        "use ftp://, ftps://, file://, stream:// or a path"
    )
