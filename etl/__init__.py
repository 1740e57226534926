"""headrace etl, a library: tail logs, extract and transform on Dask every tick, publish frames.

``etl.contract`` is the part readers use; the rest is the loop's. It starts no process
and reads no command line: :mod:`cluster` runs it. Names below are imported on first
use, so that readers importing the contract load nothing else.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers see; at run time each name is imported on first use
    from .contract import FrameStream as FrameStream
    from .parser import FunctionParser as FunctionParser
    from .parser import Parser as Parser
    from .parser import take_lines as take_lines
    from .regexparser import RegexParser as RegexParser
    from .streams import ConfigError as ConfigError
    from .streams import Stream as Stream
    from .transforms import Map as Map
    from .transforms import Resample as Resample
    from .transforms import Step as Step
    from .transforms import Transform as Transform

_EXPORTS = {
    "ConfigError": "streams",
    "FrameStream": "contract",
    "FunctionParser": "parser",
    "Map": "transforms",
    "Parser": "parser",
    "RegexParser": "regexparser",
    "Resample": "transforms",
    "Step": "transforms",
    "Stream": "streams",
    "Transform": "transforms",
    "take_lines": "parser",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'etl' has no attribute {name!r}")
    return getattr(import_module(f"etl.{_EXPORTS[name]}"), name)
