"""The Panel process's collection policy: built sessions frozen out of CPython's full
collections, collected in full once viewers left (or builds piled up), after a flush."""

from __future__ import annotations

import gc
import weakref

import pytest

from headrace.app.live.heap import AT_LEAST, BUILT, NO_FLUSH, Heap


class Node:
    """An object in a reference cycle: only the cyclic collector frees it."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def counts():
    """Sessions open now and closed ever, as the fan-out would tell the policy."""
    return {"open": 0, "closed": 0}  # (conftest thaws what a test froze)


def heap_of(counts: dict[str, int]) -> Heap:
    return Heap(lambda: counts["open"], lambda: counts["closed"])


def test_a_built_session_is_out_of_reach_until_enough_sessions_close(counts):
    heap = heap_of(counts)
    session = Node()
    alive = weakref.ref(session)
    heap.built()
    assert gc.get_freeze_count() > 0
    del session  # the viewer leaves: its objects are cyclic garbage, frozen
    gc.collect()
    assert alive() is not None, "a frozen object was collected by CPython's collection"

    counts["closed"] = AT_LEAST["closed"] - 1
    heap.flushed()
    assert alive() is not None and heap.full == 0
    counts["closed"] = AT_LEAST["closed"]
    heap.flushed()  # due: the full collection runs after this flush
    assert alive() is None and heap.full == 1
    assert gc.get_freeze_count() > 0, "what lives is frozen again"


def test_closes_and_builds_are_judged_against_the_sessions_open(counts):
    heap = heap_of(counts)
    counts["open"] = 100
    counts["closed"] = 49  # fewer than half of the 100 open
    heap.flushed()
    assert heap.full == 0
    counts["closed"] = 50
    heap.flushed()
    assert heap.full == 1
    # Sessions that arrive (builds about as many as those open) bring none.
    for _ in range(300):
        counts["open"] += 1
        heap.built()
        heap.flushed()
    assert heap.full == 1
    heap.collect()
    # Viewers coming and going, as many each way: builds pile up, closes are counted too.
    counts["open"] = 40
    for _ in range(int(BUILT * 40) - 1):
        heap.built()
    heap.flushed()
    assert heap.full == 2, "collected before the builds piled up"
    heap.built()
    assert heap.full == 2, "a full collection runs after a flush, not in a build"
    heap.flushed()
    assert heap.full == 3 and heap.built_since == 0


def test_a_due_collection_runs_without_flushes_once_none_came_for_a_while(counts):
    heap = heap_of(counts)
    session = Node()
    alive = weakref.ref(session)
    heap.built()
    del session
    counts["closed"] = AT_LEAST["closed"]
    heap.tick()  # due, but a flush may still come (the heap was made just now)
    assert alive() is not None and heap.full == 0
    heap._flushed_at -= NO_FLUSH + 0.1  # no rows flow: no flush came for a while
    heap.tick()
    assert alive() is None and heap.full == 1


def test_the_collectors_time_is_counted_while_watched(counts):
    heap = heap_of(counts)
    heap.watch()
    try:
        gc.collect()
        counted = heap.info()["gc_seconds"]
        assert counted > 0
    finally:
        heap.unwatch()
    gc.collect()
    assert heap.info()["gc_seconds"] == counted
