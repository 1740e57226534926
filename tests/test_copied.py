"""Pages opened as copies (headrace.app.live.copied): a session costs a copy, not a build.

In process, with a real fan-out fed by a subscriber (not connected to a cluster) and
Bokeh documents as Panel serves them; the served paths (raw protocol viewers, Chromium)
are in test_fanout, test_admission and test_browser, whose later sessions are copies.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

START = pd.Timestamp("2026-01-01", tz="UTC")


class Feed:
    def __init__(self, subscriber, stream: str = "s") -> None:
        self.subscriber, self.stream, self.sent, self.seq = subscriber, stream, 0, 0

    def publish(self, n: int) -> None:
        index = np.arange(self.sent, self.sent + n)
        self.sent += n
        self.seq += 1
        times = START + pd.to_timedelta(index * 25, unit="ms")
        frame = pd.DataFrame({"time": times, "value": index.astype(float)})
        self.subscriber.ingest(self.stream, self.seq, frame)


@pytest.fixture
def parts():
    from headrace.app import registry
    from headrace.app.live import internals
    from headrace.app.live.subscriber import Subscriber

    internals.install()
    parts = registry.reset(Subscriber("tcp://127.0.0.1:1", window=600))
    yield parts
    registry.reset()


def session(parts, page=None):
    """A new document, opened as the dashboard (or ``page``) is for a session."""
    from bokeh.document import Document
    from panel.io.state import set_curdoc

    from headrace.app.pages import dashboard

    doc = Document()
    with set_curdoc(doc):
        opened = parts.copier.open(page or dashboard.Page(parts))
    return doc, opened


def normalised(doc) -> str:
    """The document's PULL-DOC content as JSON, buffers by content instead of by id."""
    import json

    from bokeh.core.serialization import Buffer
    from bokeh.document import Document

    def default(value):
        if isinstance(value, Buffer):
            return {"buffer": bytes(value.data).hex()}
        raise TypeError(type(value))

    return json.dumps(Document.to_json(doc).content, default=default, sort_keys=True)


def ready(*docs) -> None:
    """What a browser says once it has rendered the document."""
    from bokeh.events import DocumentReady

    for doc in docs:
        doc.callbacks.trigger_event(DocumentReady())


def source_of(doc, stream: str):
    from helpers import stream_source

    return stream_source(doc, stream)


def test_a_copy_serialises_as_its_page_and_its_reply_is_made_once(parts):
    Feed(parts.subscriber).publish(40)
    built, first = session(parts)
    copy, second = session(parts)
    assert not first.copied and second.copied
    assert parts.copier.info() == {"copied": 1, "snapshots_built": 1, "copy_failed": 0}
    # The same models with the same ids and values as the built page: its reply, as it is.
    assert [r.id for r in copy.roots] == [r.id for r in built.roots]
    assert normalised(copy) == normalised(built)
    (snapshot,) = parts.copier.snapshots.values()
    assert copy.to_json() is snapshot.json  # serialised once, when the page was built
    # A change before the browser pulls: the reply is made again, with the change.
    another, third = session(parts)
    third.controller.notice.text = "changed"
    reply = another.to_json()
    assert reply is not snapshot.json and "changed" in normalised(another)


def test_copies_are_sessions_of_their_own(parts):
    feed = Feed(parts.subscriber)
    feed.publish(40)
    Feed(parts.subscriber, "t").publish(40)
    _, first = session(parts)
    doc_a, a = session(parts)
    doc_b, b = session(parts)
    a, b = a.controller, b.controller
    assert list(a.views) == list(b.views) == ["s", "t"]
    # A viewer's pick reaches its own copy only: one plot gone there, both left elsewhere.
    a.picker.value = ["t"]
    a._picked("value", None, ["t"])  # what Bokeh calls when the browser changes the picker
    assert list(a.views) == ["t"] and len(a.main.children) == 2
    assert list(b.views) == ["s", "t"] and len(b.main.children) == 3
    assert b.picker.value == ["s", "t"] and first.controller.picker.value == ["s", "t"]
    # A window picked in one copy is that copy's.
    a.span.active = 1
    a._windowed("active", 0, 1)
    assert a.window is not None and b.window is None
    # Each copy's sources are its own, fed the rows since the page was built.
    ready(doc_a, doc_b)
    feed.publish(10)
    parts.fanout.flush()
    got = np.asarray(source_of(doc_b, "s").data["value"])
    assert got[-1] == feed.sent - 1 and len(got) == feed.sent
    assert source_of(doc_b, "s") is not source_of(doc_a, "t")


def test_a_copy_holds_the_rows_of_its_page_and_gets_the_rows_since(parts):
    feed = Feed(parts.subscriber)
    feed.publish(40)
    built, _ = session(parts)
    feed.publish(25)  # after the page was built: a copy's source does not have them
    parts.fanout.flush()
    copy, _ = session(parts)
    assert len(source_of(copy, "s").data["value"]) == 40
    ready(built, copy)
    parts.fanout.flush()  # not a served session: the fan-out streams into its document
    for doc in (built, copy):
        values = np.asarray(source_of(doc, "s").data["value"])
        assert list(values) == list(range(65))  # each row once, in order


def test_a_page_built_before_its_streams_is_built_again_once_they_come(parts):
    _, first = session(parts)
    assert first.controller.views == {}
    _, second = session(parts)
    assert second.copied
    Feed(parts.subscriber).publish(10)
    _, third = session(parts)
    assert not third.copied and list(third.controller.views) == ["s"]
    _, fourth = session(parts)
    assert fourth.copied and list(fourth.controller.views) == ["s"]


def test_a_theme_or_user_of_its_own_is_a_page_of_its_own(parts):
    from headrace.app.live.copied import _key

    class Request:
        def __init__(self, arguments):
            self.arguments = arguments

    class Context:
        def __init__(self, arguments):
            self.request = Request(arguments)

    class Doc:
        def __init__(self, arguments):
            self.session_context = Context(arguments)

    dark = Doc({"theme": [b"dark"], "bokeh-session-id": [b"x"]})
    light = Doc({"theme": [b"default"], "bokeh-session-id": [b"y"]})
    other_id = Doc({"theme": [b"dark"], "bokeh-session-id": [b"z"]})
    assert _key("p", dark, None) != _key("p", light, None)
    assert _key("p", dark, None) == _key("p", other_id, None)  # the session id aside
    assert _key("p", dark, "ann") != _key("p", dark, "bob")


def test_a_copy_that_fails_is_built_and_the_reason_logged_once(parts, caplog):
    from headrace.app.pages import dashboard

    Feed(parts.subscriber).publish(10)

    class Failing(dashboard.Page):
        def bind(self, doc, copies, record):
            super().bind(doc, copies, record)  # its views made and fed, then a failure
            raise RuntimeError("cannot bind")

    page = Failing(parts)
    session(parts, page)
    with caplog.at_level(logging.WARNING, "headrace.app.live.copied"):
        docs = [session(parts, page) for _ in range(3)]
    assert all(not opened.copied for _, opened in docs)
    assert parts.copier.info()["copy_failed"] == 3
    told = [r for r in caplog.records if "cannot bind" in r.getMessage()]
    assert len(told) == 1 and "dashboard" in told[0].getMessage()
    # Each fell back to a whole page of its own, fed through its own sources only.
    for doc, opened in docs:
        assert list(opened.controller.views) == ["s"] and len(doc.roots) > 3
        models = {m.id for m in doc.models}
        gate = parts.fanout._by_doc[doc]
        assert len(gate.sinks) == 1 and all(s.model in models for s in gate.sinks)


def test_a_page_of_live_views_is_copied_with_its_views(parts):
    import panel as pn

    from headrace import live
    from headrace.app.views.page import ViewsPage

    feed = Feed(parts.subscriber)
    feed.publish(40)

    def layout():
        view = live.view(lambda rows: _curve(rows), rows="s", name="test/copied")
        return pn.template.BootstrapTemplate(title="copied", main=[view])

    page = ViewsPage(layout, "test-page", "copied", parts)
    built, first = session(parts, page)
    copy, second = session(parts, page)
    assert not first.copied and second.copied
    assert normalised(copy) == normalised(built)
    (view,) = second.controller.views
    assert view.box.document is copy and len(view.sinks) == 1
    ready(copy)
    feed.publish(5)
    parts.fanout.flush()
    assert np.asarray(source_of(copy, "s").data["value"])[-1] == feed.sent - 1


def _curve(rows):
    import holoviews as hv

    return hv.Curve(rows, "time", "value")


@pytest.mark.timeout(120)
def test_a_copied_page_is_served_with_the_same_html_as_the_built_one(parts):
    """The GET of a page whose session is a copy loads what the built page loads (the
    template's design: Bootstrap's JavaScript), and places the same roots."""
    import re
    import urllib.request

    from helpers import serve_threaded

    from headrace.app.pages.dashboard import build

    Feed(parts.subscriber).publish(40)
    server, port = serve_threaded({"dashboard": lambda: build(parts)})
    try:
        url = f"http://127.0.0.1:{port}/dashboard?theme=dark"
        pages = [urllib.request.urlopen(url, timeout=30).read().decode() for _ in range(2)]
    finally:
        server.stop()
    assert parts.copier.info()["copied"] == 1 and parts.copier.info()["snapshots_built"] == 1
    scripts = [re.findall(r'<script[^>]* src="([^"]+)"', page) for page in pages]
    assert any("bootstrap" in src for src in scripts[0]) and scripts[1] == scripts[0]
    roots = [sorted(re.findall(r'"root_ids":\[([^\]]*)\]', page)) for page in pages]
    assert roots[1] == roots[0]


@pytest.mark.timeout(120)
def test_a_script_served_with_live_page_is_copied_for_its_later_sessions(parts, tmp_path):
    """Panel runs an app's script in a module of a new name for every session; the page
    is still known as the same one, so later sessions are copies."""
    import urllib.request

    from helpers import serve_threaded

    Feed(parts.subscriber).publish(40)
    script = tmp_path / "app.py"
    script.write_text(
        "import holoviews as hv\n"
        "import panel as pn\n"
        "from headrace import live\n\n"
        "def layout():\n"
        "    view = live.view(lambda rows: hv.Curve(rows, 'time', 'value'), rows='s',\n"
        "                     name='test/script')\n"
        "    return pn.template.BootstrapTemplate(title='script', main=[view])\n\n"
        "live.page(layout)\n"
    )
    server, port = serve_threaded({"app": str(script)})
    try:
        for _ in range(3):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/app", timeout=30).read()
    finally:
        server.stop()
    assert parts.copier.info() == {"copied": 2, "snapshots_built": 1, "copy_failed": 0}
