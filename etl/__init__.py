"""headrace etl: tail logs, extract and transform on Dask every tick, publish frames.

``etl.contract`` is the part readers use; the rest is the loop's. Names below are
imported on first use so that readers importing the contract load nothing else.
"""

from importlib import import_module

_EXPORTS = {
    "ConfigError": "streams",
    "RegexParser": "parsing",
    "Resample": "transforms",
    "Stream": "streams",
    "run": "service",
    "serve": "service",
    "take_lines": "pipeline",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'etl' has no attribute {name!r}")
    return getattr(import_module(f"etl.{_EXPORTS[name]}"), name)
