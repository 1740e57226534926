"""headrace: compute live data once on a Dask cluster, stream it to every Panel viewer.

What a user imports to define streams, run the tick loop and read published frames::

    import headrace

    cpu = headrace.Stream(
        "cpu", "ftp://127.0.0.1:2121/cpu.log", transform=headrace.Resample("25ms", "max")
    )
    headrace.run([cpu], scheduler="tcp://127.0.0.1:8786")  # blocks: the tick loop

and, in any other process with a Dask client::

    cpu = headrace.FrameStream("cpu", client)
    cpu.head()  # Head(seq=812, ring=64, published=..., interval=0.2)
    cpu.read(after=800)  # [(801, DataFrame), ..., (812, DataFrame)]

Windows over event time (:mod:`headrace.etl.windows`): ``headrace.Tumbling("1s",
agg=["max", "mean"], grace="2s")``, ``headrace.Hopping("10s", "2s")``,
``headrace.Session("30s", idle_close=5)``; streams computed from streams:
``headrace.Stream("cpu_1min", "stream://cpu", transform=headrace.Tumbling("1min"))``.

The parts live in three sub-packages: :mod:`headrace.etl` (sources, parsers,
transforms, the tick loop, the contract), :mod:`headrace.app` (the Panel side) and
:mod:`headrace.cluster` (the processes and the ``headrace`` command). Names here are
imported on first use, so ``import headrace`` loads neither Dask nor Panel.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

if TYPE_CHECKING:  # what type checkers see; at run time each name is imported on first use
    from headrace.cluster.service import run as run
    from headrace.etl.config import load as load_config
    from headrace.etl.contract import Event as Event
    from headrace.etl.contract import FrameStream as FrameStream
    from headrace.etl.contract import heads as heads
    from headrace.etl.parse.parser import FunctionParser as FunctionParser
    from headrace.etl.parse.parser import Parser as Parser
    from headrace.etl.parse.parser import take_lines as take_lines
    from headrace.etl.parse.regex import RegexParser as RegexParser
    from headrace.etl.streams import ConfigError as ConfigError
    from headrace.etl.streams import Stream as Stream
    from headrace.etl.transforms import Map as Map
    from headrace.etl.transforms import Resample as Resample
    from headrace.etl.transforms import Step as Step
    from headrace.etl.transforms import Transform as Transform
    from headrace.etl.windows import AsofJoin as AsofJoin
    from headrace.etl.windows import Hopping as Hopping
    from headrace.etl.windows import IntervalJoin as IntervalJoin
    from headrace.etl.windows import Session as Session
    from headrace.etl.windows import Tumbling as Tumbling

_EXPORTS = {
    "ConfigError": ("headrace.etl.streams", "ConfigError"),
    "Event": ("headrace.etl.contract", "Event"),
    "FrameStream": ("headrace.etl.contract", "FrameStream"),
    "FunctionParser": ("headrace.etl.parse.parser", "FunctionParser"),
    "Map": ("headrace.etl.transforms", "Map"),
    "Parser": ("headrace.etl.parse.parser", "Parser"),
    "RegexParser": ("headrace.etl.parse.regex", "RegexParser"),
    "Resample": ("headrace.etl.transforms", "Resample"),
    "Step": ("headrace.etl.transforms", "Step"),
    "Stream": ("headrace.etl.streams", "Stream"),
    "Transform": ("headrace.etl.transforms", "Transform"),
    "Tumbling": ("headrace.etl.windows", "Tumbling"),
    "Hopping": ("headrace.etl.windows", "Hopping"),
    "AsofJoin": ("headrace.etl.windows", "AsofJoin"),
    "IntervalJoin": ("headrace.etl.windows", "IntervalJoin"),
    "Session": ("headrace.etl.windows", "Session"),
    "heads": ("headrace.etl.contract", "heads"),
    "load_config": ("headrace.etl.config", "load"),
    "run": ("headrace.cluster.service", "run"),
    "take_lines": ("headrace.etl.parse.parser", "take_lines"),
}

__all__ = [
    "AsofJoin",
    "ConfigError",
    "Event",
    "FrameStream",
    "FunctionParser",
    "Hopping",
    "IntervalJoin",
    "Map",
    "Parser",
    "RegexParser",
    "Resample",
    "Session",
    "Step",
    "Stream",
    "Transform",
    "Tumbling",
    "heads",
    "load_config",
    "run",
    "take_lines",
]


def __getattr__(name: str) -> Any:
    if name == "live":  # live views (loads HoloViews and Panel, so not imported up front)
        return import_module("headrace.live")
    if name not in _EXPORTS:
        raise AttributeError(f"module 'headrace' has no attribute {name!r}")
    module, attr = _EXPORTS[name]
    return getattr(import_module(module), attr)


def __dir__() -> list[str]:
    return [*__all__, "__version__", "live"]
