"""What a tick sends: a stream's recipe pickled once, its carry as the worker pickled it."""

from __future__ import annotations

import copyreg
import io
import pickle
import time

import numpy as np
import pandas as pd
import sqlalchemy as sa
from streamparts import log_lines

from headrace.etl.contract import Span
from headrace.etl.loop import pipeline
from headrace.etl.parse.parser import Malformed
from headrace.etl.parse.regex import RegexParser
from headrace.etl.sources.base import Cursor
from headrace.etl.sources.local import FileSource
from headrace.etl.steps import Carry, Held
from headrace.etl.store.pickles import Pickled, value
from headrace.etl.store.state import Checkpoint, StateStore
from headrace.etl.transforms import Resample


def test_a_work_sends_its_recipe_as_it_is_and_a_worker_reads_it_once(tmp_path):
    source, parser, transform = FileSource(tmp_path / "a.log"), RegexParser(), Resample("25ms")
    recipe = pipeline.recipe(source, parser, transform)
    works = [
        pipeline.Work("a", source, Cursor(offset=n), None, parser, transform, None, recipe)
        for n in (10, 20)
    ]
    packed = pipeline.pack(works)
    assert recipe in packed  # the loop's bytes as they are, not pickled again
    first, second = pickle.loads(packed)
    assert (first.cursor.offset, second.cursor.offset) == (10, 20)
    assert first.parser is second.parser and first.transform is second.transform
    assert type(first.parser) is RegexParser and first.source.path == source.path
    assert pickle.loads(pipeline.pack(works))[0].parser is first.parser  # a later tick
    other = pipeline.recipe(source, RegexParser(time_format="%Y-%m-%d %H:%M:%S"), transform)
    changed = pipeline.Work("a", source, Cursor(), None, parser, transform, None, other)
    assert pickle.loads(pipeline.pack([changed]))[0].parser is not first.parser
    plain = pipeline.Work("a", source, Cursor(), None, parser, transform, None)  # no recipe
    assert type(pickle.loads(pipeline.pack([plain]))[0].parser) is RegexParser


def test_a_carry_goes_from_the_worker_to_the_state_as_the_worker_pickled_it(tmp_path):
    path = tmp_path / "a.log"
    path.write_bytes(log_lines(41))  # one a second: the newest period stays open
    work = pipeline.Work(
        "a", FileSource(path), Cursor(), None, RegexParser(), Resample("25ms"), None
    )
    summary = pipeline.tick([work])[0].summary
    carry = summary.carry
    assert isinstance(carry, Pickled) and len(value(carry).rows) == 1

    store = StateStore(tmp_path / "state")
    store.save_many([("a", Checkpoint(summary.cursor, 2, carry), None)], time.time())
    with store.engine.connect() as conn:
        t = store.tables.streams
        stored = conn.execute(sa.select(t.c.carry).where(t.c.name == "a")).scalar_one()
    assert stored == carry.data  # the same bytes: never unpickled and pickled again
    loaded = store.load("a").carry
    assert value(loaded).rows.frame().equals(value(carry).rows.frame())
    store.close()

    idle = pipeline.Work("a", work.source, summary.cursor, None, work.parser, work.transform, carry)
    again = pipeline.tick([idle])[0].summary
    assert again.nbytes == 0 and again.carry is carry  # nothing new: passed back as it came
    with path.open("ab") as f:
        f.write(log_lines(10, 41))
    more = pipeline.Work("a", work.source, again.cursor, None, work.parser, work.transform, loaded)
    after = pipeline.tick([more])[0].summary  # a carry the state loaded works as well
    assert after.lines == 10 and isinstance(after.carry, Pickled) and after.carry != carry


def test_a_cursor_and_a_summary_read_back_equal_by_position():
    cursor = Cursor(84_000, 3_000, b"partial", b"f" * 64, b"h" * 1_024, "current", "17964", 7)
    summary = pipeline.Summary(
        cursor, 300, 1, "rotated", span=Span(8, 1, 2), lines=8, malformed=1, carried=1,
        samples=[Malformed(5, "no time", "bad line", "a.log")],
        carry=Pickled(b"carry"), seconds=0.001,
    )  # fmt: skip
    for value_ in (cursor, summary):
        pickled = pickle.dumps(value_, protocol=5)
        assert pickle.loads(pickled) == value_
        assert b"fingerprint" not in pickled  # no field names: read by position


def test_a_task_returns_its_results_as_bytes_that_read_back_as_its_results(tmp_path):
    """What a worker keeps until the loop fetches it: bytes, not thousands of objects."""
    works = []
    for name in ("a", "b", "c"):
        path = tmp_path / f"{name}.log"
        path.write_bytes(log_lines(41))
        works.append(
            pipeline.Work(
                name, FileSource(path), Cursor(), None, RegexParser(), Resample("25ms"), None
            )
        )
    works.append(  # a stream that cannot be read fails alone, in the bytes too
        pipeline.Work(
            "gone",
            FileSource(tmp_path / "no"),
            Cursor(),
            None,
            RegexParser(),
            Resample("25ms"),
            None,
        )
    )
    blob = pipeline.tick_task(pipeline.pack(works))
    assert type(blob) is bytes
    got, direct = pipeline.unpack_results(blob), pipeline.tick(works)
    assert len(got) == len(direct) == 4
    for a, b in zip(got, direct, strict=True):
        assert a.frame.equals(b.frame) and a.frame.dtypes.equals(b.frame.dtypes)
        assert (a.summary.cursor, a.summary.span, a.summary.error) == (
            b.summary.cursor,
            b.summary.span,
            b.summary.error,
        )
    assert len(got[0].frame) == 40 and got[3].summary.error and not got[0].summary.error


def test_a_carry_pickles_as_its_arrays_bytes_and_one_pickled_by_field_names_still_loads():
    keys = pd.array(["a", None], dtype="str")
    carry = Carry(Held(np.array([5, 7], np.int64), np.array([1.5, np.nan]), keys), 4, 8, 9.5)
    data = pickle.dumps(carry, protocol=5)
    assert b"rows" not in data and b"numpy" not in data  # by position, arrays as bytes
    back = pickle.loads(data)
    assert back.rows.times.tolist() == [5, 7] and back.rows.times.dtype == np.int64
    assert np.array_equal(back.rows.values, carry.rows.values, equal_nan=True)
    assert back.rows.keys.tolist() == keys.tolist() and back.rows.values.flags.writeable
    assert (back.published_until, back.watermark, back.seen) == (4, 8, 9.5)

    class ByNames(pickle.Pickler):  # how a carry was pickled before: its fields by name
        def reducer_override(self, obj):
            if type(obj) in (Carry, Held):
                return copyreg.__newobj__, (type(obj),), dict(obj.__dict__)
            return NotImplemented

    old = io.BytesIO()
    ByNames(old, protocol=5).dump(carry)
    assert b"published_until" in old.getvalue()
    again = pickle.loads(old.getvalue())
    assert again.rows.times.tolist() == [5, 7] and again.watermark == 8
