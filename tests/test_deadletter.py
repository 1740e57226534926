"""The dead-letter store: every malformed line kept once, with its place, and bounded."""

from __future__ import annotations

import pytest

from headrace.etl.parse.parser import Malformed
from headrace.etl.store.deadletter import DeadLetterStore


def bad(line: int, text: str = "garbage", source: str = "ftp://h/app.log") -> Malformed:
    return Malformed(line, "does not match pattern", text, source)


def test_lines_are_kept_with_their_place_and_a_replayed_tick_once(tmp_path):
    store = DeadLetterStore(tmp_path)
    assert store.add("s", 7, [bad(12), bad(15, "x" * 5000)], seen=100.0) == 2
    # The same tick again (a replay after a crash): nothing new.
    assert store.add("s", 7, [bad(12), bad(15, "x" * 5000)], seen=101.0) == 0
    assert store.add("other", 1, [bad(12)]) == 1
    newest, oldest = store.recent("s")
    assert (oldest.source, oldest.line, oldest.text, oldest.seq) == (
        "ftp://h/app.log",
        12,
        "garbage",
        7,
    )
    assert oldest.reason == "does not match pattern" and oldest.seen == 100.0
    assert len(newest.text) == 1000  # truncated to the bound
    assert "ftp://h/app.log:12: does not match pattern: 'garbage'" in str(oldest)
    assert store.count("s") == 2 and store.count() == 3
    store.close()
    # It is on disk: a restarted loop and `headrace status` see the same.
    assert DeadLetterStore(tmp_path).count("s") == 2


def test_a_flood_of_bad_lines_stays_bounded_and_keeps_the_newest(tmp_path):
    store = DeadLetterStore(tmp_path, per_stream=500)
    for seq in range(1, 201):  # 200 ticks of 100 bad lines: 20,000 lines
        store.add("flood", seq, [bad(seq * 1000 + i) for i in range(100)])
        store.add("quiet", seq, [bad(seq)] if seq % 50 == 0 else [])
    assert store.count("flood") == 500
    lines = [d.line for d in store.recent("flood", limit=500)]
    assert lines == sorted(lines, reverse=True) and lines[0] == 200_099 and lines[-1] == 196_000
    # One stream's flood does not push out another's letters.
    assert store.count("quiet") == 4
    size = (tmp_path / "deadletters.sqlite").stat().st_size
    assert size < 2_000_000, size


def test_bound_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="per_stream"):
        DeadLetterStore(tmp_path, per_stream=0)
