"""The contract's schema version, and the refusal of messages of a version this code does not know.

Every message on the cluster (an :class:`~headrace.etl.contract.Event`, a
:class:`~headrace.etl.contract.health.HealthRecord`, a :class:`~headrace.etl.contract.Head`)
may carry ``v``, the schema version of the headrace that wrote it; a message without one is
version 1. A reader refuses a version it does not know (a newer loop's message) with
:class:`SchemaVersionError` rather than misread it; readers of many streams log the refusal
once per stream (:func:`log_refused`) and carry on with the others.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1  # the version this code writes in events, heads and health records
# Version 2 added the tick message (several frames announced in one event): written with
# ``v`` 2 (see headrace.etl.contract.batch), so that a reader of version 1 only refuses it.
TICK_VERSION = 2
SUPPORTED_VERSIONS = (1, 2)  # the versions this code reads
FIRST_VERSION = 1  # what a message without ``v`` is

# (what, stream, version) already logged by log_refused
_logged: set[tuple[str, str, str]] = set()


class SchemaVersionError(ValueError):
    """A message of a schema version this process cannot read."""

    def __init__(self, what: str, stream: str, version: object) -> None:
        self.what, self.stream, self.version = what, stream, version
        supported = ", ".join(str(v) for v in SUPPORTED_VERSIONS)
        newer = isinstance(version, int) and version > max(SUPPORTED_VERSIONS)
        cause = "it was written by a newer headrace" if newer else "no headrace writes it"
        super().__init__(
            f"refused {what} of stream {stream!r}: schema version {version!r}, but this "
            f"process reads version(s) {supported} only ({cause}): upgrade headrace in this "
            "process to one that reads it"
        )


def check_message(what: str, stream: str, msg: Mapping[str, Any]) -> None:
    """Raise :class:`SchemaVersionError` unless ``msg``'s ``v`` is a version this code reads.

    ``what`` (``"event"``, ``"health record"``, ``"head"``) and ``stream`` name the message
    in the error.
    """
    version = msg.get("v", FIRST_VERSION)
    if type(version) is not int or version not in SUPPORTED_VERSIONS:
        raise SchemaVersionError(what, stream, version)


def log_refused(exc: SchemaVersionError) -> None:
    """Log ``exc`` at ERROR, once per kind of message, stream and version in this process."""
    key = (exc.what, exc.stream, repr(exc.version))
    if key not in _logged:
        _logged.add(key)
        log.error("%s", exc)
