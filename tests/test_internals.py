"""The private Bokeh, Panel and Tornado internals headrace reaches into, checked on this install.

:mod:`headrace.app.live.internals` builds Bokeh models the way Bokeh's deserializer does and
writes Bokeh protocol messages straight to a session's Tornado
websocket (the attributes Panel's ``unlocked()`` uses); a few other modules use Panel and
Bokeh functions outside their documented API. They were written for the release series
named in ``internals.py`` (``BOKEH_TESTED``, ``PANEL_TESTED``, ``TORNADO_TESTED``), the ones the
lock file pins. After an upgrade these tests fail, naming the module to re-check, rather
than a viewer's session going quiet. The lock itself is checked here too (quickly): it pins
every requirement, ``environment.yml`` follows it, and the main libraries are its versions.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

from headrace.app.live import internals as wire
from headrace.app.views import hvinternals

TESTED = {
    "bokeh": wire.BOKEH_TESTED,
    "panel": wire.PANEL_TESTED,
    "holoviews": hvinternals.HOLOVIEWS_TESTED,
    "tornado": wire.TORNADO_TESTED,
}
CLONE = WIRE = "headrace.app.live.internals"
HV = "headrace.app.views.hvinternals"

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "lock-linux-x86_64-py311.txt"
MAIN = [
    "bokeh",
    "panel",
    "holoviews",
    "dask",
    "distributed",
    "pandas",
    "numpy",
    "pyarrow",
    "tornado",
]
CONDA_NAMES = {"msgpack-python": "msgpack"}  # conda-forge's name: PyPI's


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked() -> dict[str, str]:
    """The lock file's pins, by canonical name."""
    pins = re.findall(r"^([A-Za-z0-9][A-Za-z0-9_.-]*)==(\S+)", LOCK.read_text(), re.M)
    return {canonical(name): pinned for name, pinned in pins}


def installed() -> str:
    return ", ".join(f"{name} {version(name)}" for name in TESTED)


def written_for() -> str:
    return ", ".join(f"{name} {series}" for name, series in TESTED.items())


@contextmanager
def relied_on_by(module: str, what: str) -> Iterator[None]:
    """Fail with the module to re-check when ``what`` (a private API) is gone or changed."""
    try:
        yield
    except Exception as exc:
        pytest.fail(
            f"{what} changed ({type(exc).__name__}: {exc}) with {installed()}: re-check "
            f"{module}, written for {written_for()} (then update the *_TESTED constants "
            f"in {WIRE} and the caps in pyproject.toml)",
            pytrace=False,
        )


@pytest.mark.parametrize("name", sorted(TESTED))
def test_installed_versions_are_the_series_the_internals_were_written_for(name):
    series = Version(version(name)).release[:2]
    assert series == Version(TESTED[name]).release[:2], (
        f"{name} {version(name)} is installed, but {WIRE} uses private "
        f"{name} internals checked against {name} {TESTED[name]}.x only: re-check them "
        f"(tests/test_internals.py says what they use), then update {WIRE}'s constants, "
        "pyproject.toml's caps and the lock file"
    )


@pytest.mark.parametrize("name", ["bokeh", "panel", "holoviews"])
def test_the_package_requires_the_series_the_internals_were_written_for(name):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    specs = [Requirement(r) for r in project["project"]["dependencies"]]
    spec = next(r.specifier for r in specs if r.name == name and r.marker is None)
    major, minor = Version(TESTED[name]).release[:2]
    assert spec.contains(f"{major}.{minor}.0") and spec.contains(f"{major}.{minor}.99"), (
        f"pyproject.toml's {name}{spec} leaves out {TESTED[name]}, the series {WIRE} names"
    )
    assert not spec.contains(f"{major}.{minor + 1}.0"), (
        f"pyproject.toml's {name}{spec} lets in {major}.{minor + 1}, whose internals nobody "
        f"checked: cap it below (see {WIRE})"
    )


def test_clone_internals():
    """What ``clone`` uses: ``Model.__new__(id=)``, HasProps' value dicts, property wrappers."""
    from bokeh.core.has_props import HasProps
    from bokeh.core.property.wrappers import PropertyValueContainer
    from bokeh.document import Document
    from bokeh.document.events import ColumnsStreamedEvent
    from bokeh.model import Model
    from bokeh.models import ColumnDataSource

    from headrace.app.live.internals import clone

    source = ColumnDataSource(data={"x": np.arange(3.0)})
    with relied_on_by(CLONE, "Model.__new__(cls, id=...)"):
        bare = ColumnDataSource.__new__(ColumnDataSource, id=source.id)
        assert bare.id == source.id
        assert "id" in inspect.signature(Model.__new__).parameters
    for attribute in (
        "_property_values",
        "_unstable_default_values",
        "_unstable_themed_values",
        "_initialized",
    ):
        with relied_on_by(CLONE, f"HasProps.{attribute}"):
            assert hasattr(source, attribute)
            assert issubclass(ColumnDataSource, HasProps)
    with relied_on_by(CLONE, "HasProps.lookup(name).property.wrap"):
        descriptor = source.lookup("data")
        assert callable(descriptor.property.wrap)
    with relied_on_by(CLONE, "PropertyValueContainer._register_owner"):
        assert isinstance(source.data, PropertyValueContainer)
        assert callable(PropertyValueContainer._register_owner)
        assert isinstance(source.data, dict)  # fanout.py sets columns with dict.__setitem__

    copy = clone(source)
    with relied_on_by(CLONE, "a copy's wrapped values notify the copy"):
        assert copy is not source and copy.id == source.id
        assert copy.data is not source.data and list(copy.data["x"]) == [0.0, 1.0, 2.0]
        doc = Document()
        doc.add_root(copy)
        events: list[object] = []
        doc.on_change(events.append)
        copy.stream({"x": np.array([3.0])})
        assert [type(e) for e in events] == [ColumnsStreamedEvent]
        assert list(source.data["x"]) == [0.0, 1.0, 2.0]


def test_encode_internals():
    """What ``encode`` uses: Bokeh's Serializer and ``patch_doc`` message parts."""
    with relied_on_by(WIRE, "bokeh.core.serialization.Serializer / patch_doc message"):
        message = wire.encode([("p1001", {"x": np.arange(3.0)}, 10)])
        text = [p for p, binary in message.parts if not binary]
        data = [p for p, binary in message.parts if binary]
        header, _, content, ref = (json.loads(p) for p in text)
        assert header["msgtype"] == "PATCH-DOC" and header["num_buffers"] == 1
        (event,) = content["events"]
        assert event["kind"] == "ColumnsStreamed" and event["model"] == {"id": "p1001"}
        ((name, array),) = event["data"]["entries"]  # a map of ndarrays sent as buffers
        assert name == "x" and array["type"] == "ndarray" and array["dtype"] == "float64"
        assert array["array"]["data"] == {"id": ref["id"]}
        assert data == [np.arange(3.0).tobytes()]


def test_other_bokeh_and_panel_functions_used():
    """Functions outside the documented API that other modules import."""
    uses = {
        "headrace.app.live.fanout": [
            "from bokeh.settings import settings; settings.simple_ids.set_value",
            "from bokeh.events import DocumentReady",
            "from panel.io.state import set_curdoc",
        ],
        "headrace.app.pages.board": ["from panel.io.document import unlocked"],
        "headrace.app.pages.template": [
            "from panel.io.resources import LOCAL_DIST",
            "import panel as pn; pn.state.rel_path",
        ],
        "headrace.app.live.columns": [
            "from bokeh.util.serialization import convert_datetime_array"
        ],
        "headrace.app.metrics": [
            "from bokeh.server.views.auth_request_handler import AuthRequestHandler",
            "from bokeh.server.auth_provider import AuthProvider; "
            "AuthProvider.get_user; AuthProvider.get_user_async",
        ],
    }
    for module, statements in uses.items():
        for statement in statements:
            with relied_on_by(module, statement):
                exec(statement, {})


def test_server_internals_wire_writes_through():
    """What ``sockets``/``Socket`` use, on a real Bokeh server session and websocket.

    ``doc.session_context.session._subscribed_connections``, a connection's ``_socket`` (the
    ``WSHandler``), its ``write_lock._block._value`` and ``ws_connection`` with Tornado's
    ``_compressor``, ``_wire_bytes_out`` and ``stream``.
    """
    asyncio.run(asyncio.wait_for(_server_session(), 30))


async def _server_session() -> None:
    from bokeh.application import Application
    from bokeh.application.handlers.function import FunctionHandler
    from bokeh.server.server import Server
    from bokeh.util.token import generate_jwt_token, generate_session_id
    from tornado.httpclient import HTTPRequest
    from tornado.ioloop import IOLoop
    from tornado.websocket import websocket_connect

    server = Server(
        {"/app": Application(FunctionHandler(lambda doc: None))},
        io_loop=IOLoop.current(),
        address="127.0.0.1",
        port=0,
    )
    server.start()
    client = None
    try:
        token = generate_jwt_token(generate_session_id())
        url = f"ws://127.0.0.1:{server.port}/app/ws"
        client = await websocket_connect(HTTPRequest(url), subprotocols=["bokeh", token])
        ack = [await client.read_message() for _ in range(3)]  # header, metadata, content
        assert json.loads(ack[0])["msgtype"] == "ACK"
        (session,) = server.get_sessions("/app")
        doc = session.document
        with relied_on_by(WIRE, "Document.session_context.session._subscribed_connections"):
            assert doc.session_context.session is session
            (connection,) = session._subscribed_connections
        with relied_on_by(WIRE, "ServerConnection._socket (the WSHandler)"):
            handler = connection._socket
            assert handler.ws_connection is not None
        with relied_on_by(WIRE, "WSHandler.write_lock._block._value (as Panel's unlocked())"):
            assert handler.write_lock._block._value == 1
        with relied_on_by(WIRE, "tornado's WebSocketProtocol13 _compressor/_wire_bytes_out"):
            ws = handler.ws_connection
            assert ws._compressor is None  # Bokeh's default: no compression
            assert isinstance(ws._wire_bytes_out, int) and callable(ws.stream.write)
            assert ws.is_closing() is False
        (socket,) = wire.sockets(doc)
        assert socket.writable()
        message = wire.encode([("p1001", {"x": np.arange(3.0)}, 10)])
        before = ws._wire_bytes_out
        with relied_on_by(WIRE, "writing frames to the Tornado stream"):
            await socket.write(message)
            assert ws._wire_bytes_out == before + message.size
            received = [await client.read_message() for _ in message.parts]
            assert received == [p for p, _ in message.parts]
        async with handler.write_lock:  # Bokeh is mid-message: the fan-out must wait
            with relied_on_by(WIRE, "WSHandler.write_lock held"):
                assert not socket.writable()
        assert socket.writable()
    finally:
        if client is not None:
            client.close()
        server.stop()
        server.unlisten()


def test_the_lock_pins_every_requirement_and_environment_yml_follows_it():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    pins = locked()
    for requirement in map(Requirement, project["dependencies"] + extras["test"] + extras["bench"]):
        name = canonical(requirement.name)
        assert name in pins, f"{name} is not in {LOCK.name}: run ./run lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"{LOCK.name} pins {name}=={pins[name]}, pyproject.toml wants {requirement}: "
            "run ./run lock"
        )
    conda = {}
    for dependency in yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"]:
        if isinstance(dependency, str) and "=" in dependency:
            name, pinned = dependency.split("=", 1)
            conda[canonical(CONDA_NAMES.get(name, name))] = pinned
    assert conda.pop("python") == "3.11"
    assert set(MAIN) <= set(conda), f"environment.yml pins none of {set(MAIN) - set(conda)}"
    differ = {
        name: (pinned, pins.get(name)) for name, pinned in conda.items() if pins.get(name) != pinned
    }
    assert not differ, f"environment.yml's pins differ from {LOCK.name}'s: {differ}"


def test_the_main_libraries_are_the_locked_versions():
    pins = locked()
    wrong = {n: version(n) for n in MAIN if version(n) != pins[n]}
    assert not wrong, (
        f"installed {wrong}, not as {LOCK.name} pins them: reinstall (./run does when the lock "
        f"changes; by hand: pip install -c {LOCK.relative_to(ROOT)} -e '.[test,bench]')"
    )


def test_holoviews_plot_internals():
    """What live views read of HoloViews' rendering: each element plot, the element it
    drew, its handles, ``get_data`` for another element, and ``.opts`` skipped."""
    import holoviews as hv
    import pandas as pd

    from headrace.app.views.tree import backend

    backend()
    frame = pd.DataFrame({"time": pd.date_range("2026", periods=3, freq="s"), "v": [1.0, 2, 3]})
    curve = hv.Curve(frame, "time", "v").opts(color="red")
    scatter = hv.Scatter(frame, "time", "v")
    with relied_on_by(HV, "HoloViews' plot tree (traverse, current_frame, handles)"):
        plot = hv.renderer("bokeh").get_plot(curve * scatter)
        leaves = {id(h["element"]): (leaf, h) for leaf, h in hvinternals.plot_leaves(plot)}
        leaf, handles = leaves[id(curve)]
        assert {"source", "glyph", "glyph_renderer", "plot"} <= set(handles)
        assert handles["glyph_renderer"].data_source is handles["source"]
    with relied_on_by(HV, "ElementPlot.get_data(element, ranges, style)"):
        data = hvinternals.leaf_data(leaf, curve.clone(data=frame.iloc[1:]))
        assert list(data["v"]) == [2.0, 3.0]
    with relied_on_by(HV, "the style options an element plot looked up"):
        assert hvinternals.leaf_option(leaf, "color") == "red"

    def colour() -> str:
        return hv.Store.lookup_options("bokeh", curve, "style").kwargs["color"]

    with relied_on_by(HV, "holoviews.core.accessors.Opts.__call__"):
        with hvinternals.data_only():
            assert curve.opts(color="blue") is curve and colour() == "red"  # not applied
        curve.opts(color="blue")
        assert colour() == "blue"


def test_a_scratch_document_is_let_go_of_when_rendering_fails():
    """Bokeh's ``patch_curdoc`` alone would leave a dead document as ``curdoc()``."""
    from bokeh.io import curdoc
    from bokeh.io import doc as bokeh_doc

    before = curdoc()
    with relied_on_by(WIRE, "bokeh.io.doc._PATCHED_CURDOCS and patch_curdoc"):
        with pytest.raises(ZeroDivisionError), wire.scratch_document() as scratch:
            assert curdoc() is scratch
            1 / 0  # noqa: B018
        assert bokeh_doc._PATCHED_CURDOCS == [] and curdoc() is before


def _pulled(doc) -> str:
    """A session's ``PULL-DOC`` reply for ``doc``: its JSON and buffers (ids by position)."""
    from bokeh.protocol import Protocol

    message = Protocol().create("PULL-DOC-REPLY", "1", doc)
    text = message.content_json
    for i, buffer in enumerate(message.buffers):
        text = text.replace(f'"{buffer.ref["id"]}"', f'"buffer{i}"')
    return text + "".join(buffer.to_bytes().hex() for buffer in message.buffers)


def _page(theme: str) -> object:
    """A template page with widgets and a HoloViews overlay, in a document of its own."""
    import holoviews as hv
    import pandas as pd
    import panel as pn
    from bokeh.document import Document
    from panel.io.state import set_curdoc

    from headrace.app.views.tree import backend

    backend()
    frame = pd.DataFrame({"time": pd.date_range("2026", periods=50, freq="25ms"), "v": 1.0})
    doc = Document()
    with set_curdoc(doc):
        pn.template.BootstrapTemplate(
            title="t",
            sidebar=[pn.widgets.MultiChoice(options=["a", "b"]), pn.widgets.Button()],
            main=[pn.pane.HoloViews(hv.Curve(frame, "time", "v") * hv.Scatter(frame)), "x"],
            theme=theme,
        ).server_doc(doc)
    return doc


@pytest.mark.parametrize("theme", ["default", "dark"])
def test_lean_serialisation_gives_bokehs_own_bytes(theme):
    """A page serialised without computing defaults is Bokeh's own reply, byte for byte."""
    from bokeh.core.has_props import HasProps

    wire.lean_serialisation()
    lean = HasProps.query_properties_with_values
    doc = _page(theme)

    def bokehs() -> str:
        HasProps.query_properties_with_values = lean.original
        try:
            return _pulled(doc)
        finally:
            HasProps.query_properties_with_values = lean

    with relied_on_by(WIRE, "HasProps.query_properties_with_values(include_defaults=False)"):
        assert getattr(lean, "headrace", False)
        first = _pulled(doc)  # on fresh models, before Bokeh's own pass filled any default
        assert len(doc.models) > 50 and first == bokehs()
        assert _pulled(doc) == bokehs() == first


def _walked(roots: list) -> list[tuple[str, str, tuple[str, ...]]]:
    """Every model a walk finds from ``roots``, in order, with the defaults it made."""
    from bokeh.model import collect_models

    return [
        (m.id, type(m).__name__, tuple(sorted(m._unstable_default_values)))
        for m in collect_models(*roots)
    ]


@pytest.mark.parametrize("theme", ["default", "dark"])
def test_quick_reference_walks_find_what_bokehs_own_find(theme):
    """The same models in the same order, the same defaults made: on a served page (fresh,
    then walked again), on a themed one, and on every Bokeh model made with its defaults."""
    import bokeh.model.util as util
    from bokeh.model import Model

    wire.quick_references()
    quick = util.visit_immediate_value_references

    def bokehs(roots: list) -> list:
        util.visit_immediate_value_references = quick.original
        try:
            return _walked(roots)
        finally:
            util.visit_immediate_value_references = quick

    def fresh() -> tuple[list, list]:
        """Two of every Bokeh model that can be made and walked with its defaults alone."""
        mine, others = [], []
        for cls in Model.model_class_reverse_map.values():
            try:
                pair = cls(), cls()
                bokehs([cls()])
            except Exception:  # it needs arguments, or a value set before it is walked
                continue
            mine.append(pair[0])
            others.append(pair[1])
        return mine, others

    with relied_on_by(WIRE, "bokeh.model.util.visit_immediate_value_references"):
        assert getattr(quick, "headrace", False)
        # Two like pages and two sets of every model: one walked by each, fresh.
        ours, theirs = _page(theme), _page(theme)
        strip = lambda walked: [w[1:] for w in walked]  # noqa: E731 (ids differ)
        assert strip(_walked(list(ours.roots))) == strip(bokehs(list(theirs.roots)))
        assert _walked(list(ours.roots)) == bokehs(list(ours.roots))  # and again, walked
        assert len(ours.models) > 50
        mine, others = fresh()
        assert len(mine) > 300
        assert strip(_walked(mine)) == strip(bokehs(others))
        assert _walked(mine) == bokehs(mine)


def _ids_in_order(text: str) -> str:
    """``text`` with Bokeh's model ids numbered by first appearance, and Panel's names
    (``Column00123``) and template parts (``main-1404...``, an object's id) without their
    numbers: two builds of a page compare."""
    ids: dict[str, str] = {}
    text = re.sub(r"\bp\d+\b", lambda m: ids.setdefault(m[0], f"id{len(ids)}"), text)
    text = re.sub(r"\b([a-z_]+)-\d{6,}\b", r"\1-#", text)
    return re.sub(r"\b([A-Z][A-Za-z]+)\d{5}\b", r"\1#", text)


@pytest.mark.parametrize("theme", ["default", "dark"])
def test_quick_config_set_sets_and_restores_and_a_page_renders_as_with_panels_own(theme):
    import panel as pn
    from panel.config import _config
    from panel.theme import Bootstrap

    wire.quick_config_set()
    quick = _config.set
    with relied_on_by(WIRE, "panel.config._config.set, _parameter_set, _globals"):
        assert getattr(quick, "headrace", False)
        before = pn.config.design
        with pn.config.set(design=Bootstrap, sizing_mode="stretch_width"):
            assert pn.config.design is Bootstrap and pn.config.sizing_mode == "stretch_width"
        assert pn.config.design is before and pn.config.sizing_mode is None
        with pytest.raises(ZeroDivisionError), pn.config.set(design=Bootstrap):
            1 / 0  # noqa: B018 (restored after an error too)
        assert pn.config.design is before
        ours = _ids_in_order(_pulled(_page(theme)))
        _config.set = quick.original
        try:
            panels = _ids_in_order(_pulled(_page(theme)))
        finally:
            _config.set = quick
        assert ours == panels and len(ours) > 10_000


def test_models_made_as_copies_are_what_bokeh_makes_and_each_their_own():
    from bokeh.core.serialization import Serializer
    from bokeh.models import Column, Div

    def encoded(model) -> str:
        rep = Serializer().encode(model)
        return json.dumps({k: v for k, v in rep.items() if k != "id"}, sort_keys=True)

    styles = {"color": "#fff", "padding": "4px"}
    with relied_on_by(WIRE, "a Bokeh model's _property_values and unstable defaults"):
        first = wire.made(Div, text="a", margin=(0, 10), styles=styles)
        again = wire.made(Div, text="b", margin=(0, 10), styles=styles)
        made = Div(text="b", margin=(0, 10), styles=styles)
        assert again.id != first.id and encoded(again) == encoded(made)
        again.styles["color"] = "#000"  # its own containers: the next copy is unchanged
        again.css_classes.append("x")
        third = wire.made(Div, text="c", margin=(0, 10), styles=styles)
        assert third.styles == styles and third.css_classes == [] and first.text == "a"
        changes = []
        third.on_change("text", lambda attr, old, new: changes.append((old, new)))
        third.text = "d"  # a copy tells its own watchers
        assert changes == [("c", "d")]
        other = wire.made(Div, text="e", margin=(5, 5))  # other properties: made anew
        assert encoded(other) == encoded(Div(text="e", margin=(5, 5)))
        column = wire.made(Column, sizing_mode="stretch_width")
        column.children = [third, other]
        assert encoded(column) == encoded(
            Column(children=[third, other], sizing_mode="stretch_width")
        )


def test_a_document_serialised_ahead_is_sent_as_it_was_unless_it_changed():
    from bokeh.document import Document
    from bokeh.models import ColumnDataSource, Div

    doc = Document()
    doc.add_root(Div(text="a"))
    doc.add_root(ColumnDataSource(data={"x": np.arange(3.0)}))
    fresh = _pulled(doc)
    with relied_on_by(WIRE, "Document.to_json, on_change, remove_on_change"):
        wire.serialise_ahead(doc)
        assert _pulled(doc) == fresh  # the reply made ahead
        assert "to_json" not in vars(doc)  # once: then Bokeh's own again
        wire.serialise_ahead(doc)
        doc.roots[0].text = "b"  # the page changed while it waited
        assert '"b"' in _pulled(doc) and _pulled(doc) != fresh


def test_lazy_references_give_bokehs_own_patch_bytes():
    """Changes serialised with references made as needed are Bokeh's own, byte for byte:
    known models as refs, new ones in full, buffers alike."""
    from bokeh.core.json_encoder import serialize_json
    from bokeh.core.serialization import Serializer
    from bokeh.document import Document
    from bokeh.models import Column, ColumnDataSource, Div

    wire.lazy_references()
    lazy = Serializer.__init__
    divs = [Div(text=str(i)) for i in range(50)]
    doc = Document()
    doc.add_root(Column(children=divs))
    source = ColumnDataSource(data={"x": np.arange(3.0)})
    doc.add_root(source)
    doc.models.flush_synced()  # as after the PULL-DOC reply: every model is known

    def encoded(events: list) -> str:
        serializer = Serializer(references=doc.models.synced_references)
        text = serialize_json(serializer.encode(events))
        for i, buffer in enumerate(serializer.buffers):  # named by a counter: by position
            text = text.replace(f'"{buffer.ref["id"]}"', f'"buffer{i}"')
        return text + "".join(b.to_bytes().hex() for b in serializer.buffers)

    changes = [
        lambda: setattr(divs[3], "text", "new"),  # a known model: a ref
        lambda: setattr(divs[4], "styles", {"color": "red"}),
        lambda: doc.roots[0].children.append(Div(text="added")),  # a new model: in full
        lambda: source.stream({"x": np.arange(2.0)}),
    ]
    with relied_on_by(WIRE, "Serializer(references=...)._references, has_ref/get_ref/add_ref"):
        assert getattr(lazy, "headrace", False)
        messages = []
        for change in changes:
            events: list = []
            doc.on_change(events.append)
            change()
            doc.remove_on_change(events.append)
            ours = encoded(events)
            Serializer.__init__ = lazy.original
            try:
                bokehs = encoded(events)
            finally:
                Serializer.__init__ = lazy
            assert ours == bokehs
            messages.append(ours)
        assert '"added"' in messages[2] and '"text":"new"' not in messages[2]  # in full


def test_an_application_validates_its_first_document_only():
    from bokeh.application import Application
    from bokeh.application.handlers.function import FunctionHandler
    from bokeh.document import Document
    from bokeh.models import Div

    wire.validate_once()
    validated = []
    original = Document.validate

    def validate(doc: Document) -> None:
        validated.append(doc)
        original(doc)

    app = Application(FunctionHandler(lambda doc: doc.add_root(Div(text="page"))))
    other = Application(FunctionHandler(lambda doc: doc.add_root(Div(text="other"))))
    Document.validate = validate  # type: ignore[method-assign]
    try:
        with relied_on_by(WIRE, "Application.initialize_document and .handlers"):
            docs = [Document() for _ in range(3)]
            for doc in docs:
                app.initialize_document(doc)
            other.initialize_document(Document())
            assert [d.roots[0].text for d in docs] == ["page"] * 3  # every page was built
    finally:
        Document.validate = original  # type: ignore[method-assign]
    assert validated[0] is docs[0] and len(validated) == 2  # each app's first document


UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
SCRIPT_ID = re.compile(r"""(id="|getElementById\(')p\d+""")


def drawn(page: str) -> str:
    """A page without the ids Bokeh draws for each rendering (random, or a counter's)."""
    return SCRIPT_ID.sub(r"\1p", UUID.sub("U", page))


def test_a_reused_sessions_page_is_rendered_once_and_given_each_viewers_token():
    """Panel's own page, but for the element ids Bokeh draws at random; a new kind of
    model in the session's document renders it again."""
    import urllib.request

    import panel as pn
    import panel.io.server as panel_server
    from bokeh.models import Div
    from bokeh.util.token import get_session_id
    from panel.io.state import state
    from ports import free_port

    def app() -> pn.template.BaseTemplate:
        return pn.template.FastListTemplate(
            title="page", sidebar=[pn.widgets.Select(options=["a", "b"])], main=["hello"]
        )

    wire.cached_pages()
    ours = panel_server.server_html_page_for_session
    port = free_port()
    pn.config.reuse_sessions = True
    thread = pn.serve({"page": app}, port=port, address="127.0.0.1", show=False, threaded=True)
    try:
        url = f"http://127.0.0.1:{port}/page"

        def page() -> tuple[str, str]:
            for _ in range(100):
                try:
                    text = urllib.request.urlopen(url, timeout=10).read().decode()
                    break
                except OSError:  # not listening yet
                    time.sleep(0.1)
            token = re.search(r'"token":"([^"]+)"', text).group(1)
            return text.replace(token, "TOKEN"), token

        with relied_on_by(WIRE, "panel.io.server.server_html_page_for_session"):
            assert getattr(ours, "headrace", False)
            pages = [page() for _ in range(3)]
            panel_server.server_html_page_for_session = ours.original
            try:
                panels, _ = page()
            finally:
                panel_server.server_html_page_for_session = ours
        texts, tokens = zip(*pages, strict=True)
        assert len({get_session_id(t) for t in tokens}) == 3  # each viewer its own session
        assert texts[0] == texts[1] == texts[2]  # rendered once: its random ids too
        # Panel's own page, with what goes first in its <head>
        assert drawn(texts[0]) == drawn(panels.replace("<head>", f"<head>{ours.head}", 1))
        (session,) = {id(s): s for s in state._sessions.values()}.values()
        done = []
        loop = thread.asyncio_loop  # the document is changed on its session's loop
        loop.call_soon_threadsafe(lambda: done.append(session.document.add_root(Div())))
        for _ in range(100):
            if done:
                break
            time.sleep(0.05)
        root = session.document.roots[-1].id
        again, _ = page()
        assert root in again and root not in texts[0]  # a page with the new root
    finally:
        pn.config.reuse_sessions = False
        thread.stop()
        state._sessions.clear()
        state._session_key_funcs.clear()
