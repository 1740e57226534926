"""What a line pattern lets the parser do faster than a regex per line.

A pattern made only of whitespace-separated non-space fields (the default,
``^(?P<time>\\S+)\\s+(?P<value>\\S+)\\s*$``) can be split like a CSV row; a pattern
RE2 accepts can run in Arrow's ``extract_regex`` instead of Python's ``re``.
"""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.compute as pc

# A pattern made only of whitespace-separated non-space fields can use the fast split.
_FIELD_RE = r"\(\?P<(\w+)>(?:\\S\+|\[\^ \]\+|\[\^\\s\]\+)\)"
_SEP_RE = r"(?:\\s\+| \+| )"
_SPLITTABLE = re.compile(rf"\^{_FIELD_RE}((?:{_SEP_RE}{_FIELD_RE})*)(?:\\s\*)?\$")


def split_fields(pattern: str) -> tuple[str, ...] | None:
    """Field names in order if the fast split reproduces ``pattern``, else None."""
    m = _SPLITTABLE.fullmatch(pattern)
    if m is None:
        return None
    return (m.group(1), *re.findall(_FIELD_RE, m.group(2)))


def re2_accepts(pattern: str) -> bool:
    try:
        pc.extract_regex(pa.array([""], pa.large_string()), pattern)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False
    return True
