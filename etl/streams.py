"""A stream: a name, a source, a parser, a transform and an interval.

Define streams in Python::

    from headrace.cluster.service import run
    from headrace import Stream

    streams = [
        Stream("cpu", "ftp://127.0.0.1:2121/cpu.log", interval=0.2),
        Stream("mine", "/var/log/mine.log", parser=my_parse, transform=my_transform),
    ]
    run(streams, scheduler="tcp://127.0.0.1:8786")

``parser`` is a :class:`~headrace.etl.parse.parser.Parser` (default: a :class:`RegexParser`) or any
function ``bytes -> DataFrame`` (use :func:`~headrace.etl.parse.parser.take_lines` for a function of
text lines); ``transform`` is a :class:`~headrace.etl.transforms.Transform` (default: a
:class:`Resample`), any function ``DataFrame -> DataFrame``, or None to publish parsed
rows as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from headrace.etl.contract import validate_name
from headrace.etl.parse.parser import FunctionParser, Parser
from headrace.etl.parse.regex import RegexParser
from headrace.etl.sources.base import Source
from headrace.etl.sources.factory import make_source
from headrace.etl.sources.streams import FramesParser, StreamsSource
from headrace.etl.store.sink import SinkSpec
from headrace.etl.transforms import Map, Resample, Transform

DEFAULT_INTERVAL = 0.2


class ConfigError(ValueError):
    """A stream or setting is invalid; the message names the stream and the setting."""

    def __init__(
        self,
        message: str,
        *,
        stream: str | None = None,
        setting: str | None = None,
        where: str | None = None,
    ) -> None:
        parts = [where] if where else []
        if stream is not None:
            parts.append(f"stream {stream!r}")
        if setting is not None:
            parts.append(f"setting {setting!r}")
        super().__init__(": ".join([*parts, message]))
        self.stream, self.setting = stream, setting


def _identity(frame: pd.DataFrame) -> pd.DataFrame:
    return frame


@dataclass
class Stream:
    name: str
    source: Source | str
    parser: Parser | Callable[[bytes], pd.DataFrame] = field(default_factory=RegexParser)
    transform: Transform | Callable[[pd.DataFrame], pd.DataFrame] | None = field(
        default_factory=Resample
    )
    interval: float = DEFAULT_INTERVAL
    source_options: dict = field(default_factory=dict)
    # Where published frames are kept (unset fields: the loop's defaults); None: nowhere.
    sink: SinkSpec | None = field(default_factory=SinkSpec)

    def __post_init__(self) -> None:
        try:
            validate_name(self.name)
        except ValueError as exc:
            raise ConfigError(str(exc), stream=str(self.name), setting="name") from None
        if not isinstance(self.interval, (int, float)) or self.interval <= 0:
            raise ConfigError(
                f"must be a positive number of seconds, got {self.interval!r}",
                stream=self.name,
                setting="interval",
            )
        if isinstance(self.source, str):
            try:
                self.source = make_source(self.source, **self.source_options)
            except (ValueError, TypeError) as exc:
                raise ConfigError(str(exc), stream=self.name, setting="source") from None
        if isinstance(self.source, StreamsSource):  # a derived stream: frames in, not lines
            self.source = self.source.named(self.name)
            if isinstance(self.parser, RegexParser):
                self.parser = FramesParser()
        self.parser = self._extension("parser", self.parser, Parser, FunctionParser)
        transform = Map(_identity) if self.transform is None else self.transform
        self.transform = self._extension("transform", transform, Transform, Map)

    def _extension(self, setting: str, value: Any, kind: type, wrap: Callable[[Any], Any]) -> Any:
        """``value`` if it is a ``kind`` (a Protocol), else the plain function ``wrap``ped."""
        if isinstance(value, kind):
            return value
        if not callable(value):
            raise ConfigError(
                f"must be a {kind.__name__} or callable, got {value!r}",
                stream=self.name,
                setting=setting,
            )
        return wrap(value)
