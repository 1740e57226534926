"""Streams and loop settings from a YAML file.

```yaml
scheduler: tcp://127.0.0.1:8786   # optional: else DASK_SCHEDULER_ADDRESS, else an embedded cluster
state_dir: .headrace               # where offsets and sequence numbers survive restarts
state:                             # optional: the loop's state in a database, not state_dir,
  url: postgresql+psycopg://headrace@db.example/headrace   # shared by a standby loop
  password_env: STATE_PASSWORD
  lease: 1s                        # a standby takes over after this long without a beat
ring: 64                           # frames kept per stream on the cluster
cluster: {n_workers: 2}            # options of the embedded LocalCluster
sink:                              # history of every stream (none: no history)
  url: postgresql+psycopg://headrace@db.example/history   # default: SQLite in state_dir
  password_env: HISTORY_PASSWORD
  retention: 30d                   # default: kept for ever
streams:
  cpu:
    source: ftp://reader@127.0.0.1:2121/cpu.log
    password_env: CPU_FTP_PASSWORD # or put it in ~/.netrc; never in this file if you can help it
    interval: 0.2
    parser: {pattern: '^(?P<time>\\S+) (?P<value>\\S+)$', time_format: ISO8601, max_future: 1h}
    transform: {resample: 25ms, agg: max}    # or none, or "package.module:function", or
    # {window: tumbling|hopping|session, size: 1s, step: 250ms, gap: 5s,
    #  agg: [max, mean] or m4, grace: 2s, idle_close: 1s, emit: final or early,
    #  key_skew: 30s}
    sink: {retention: 7d}                    # overrides the defaults below; none: no history
  secure:
    source: ftps://reader@ftp.example/app.log  # explicit FTPS (AUTH TLS), data connections too
    password_env: APP_FTP_PASSWORD
    ca_file: certs/ca.pem                    # relative to this file; default: system CAs
    verify: true                             # false: no certificate check (test servers)
  cpu_1min:                                # a derived stream: windows over cpu's frames
    source: stream://cpu                     # or stream://cpu,mem: two streams, for a join
    transform: {window: tumbling, size: 1min, agg: m4}
  custom:
    source: /var/log/custom.log
    parser: mypackage.parsers:parse          # a function bytes -> DataFrame
    rotated: "{name}.1"      # where the old file is after a rotation (default); none: not read;
                             # a pattern ("{name}-*", logrotate's dateext): the match that
                             # begins as the file did
    start: beginning         # or end: the first read of a file with no cursor takes nothing
    max_first_read: 16MiB    # default; that first read takes at most the last 16 MiB; 0: all
    max_line: 4MiB           # default; a line with no end of line by then is emitted as is
```
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from headrace.etl import windows
from headrace.etl.contract import DEFAULT_RING
from headrace.etl.parse.regex import RegexParser
from headrace.etl.sources.base import TailOptions
from headrace.etl.sources.streams import InputError, check_inputs
from headrace.etl.store.database import StateSpec
from headrace.etl.store.sink import SinkSpec
from headrace.etl.streams import ConfigError, Stream
from headrace.etl.transforms import Resample

_TAIL = ("rotated", "start", "max_first_read", "max_line")  # every source's: TailOptions
_TOP = {"scheduler", "state_dir", "state", "ring", "cluster", "sink", "streams"}
_STREAM = {
    "source",
    "interval",
    "parser",
    "transform",
    "sink",
    "timeout",
    "password_env",
    "netrc_file",
    "ca_file",
    "verify",
    *_TAIL,
}
_SOURCE_OPTIONS = ("timeout", "password_env", "netrc_file", "ca_file", "verify", *_TAIL)


@dataclass
class Config:
    streams: list[Stream]
    scheduler: str | None = None
    state_dir: Path = Path(".headrace")
    ring: int = DEFAULT_RING
    cluster: dict = field(default_factory=dict)
    sink: SinkSpec = field(default_factory=SinkSpec)  # the streams' defaults
    state: StateSpec | None = None  # None: the state in state_dir


def load(path: str | Path) -> Config:
    """Read and validate a config file; errors name the file, the stream and the setting."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(str(exc), where=str(path)) from None
    return parse(raw, where=str(path), base=path.parent)


def parse(raw: Any, where: str = "config", base: Path = Path(".")) -> Config:
    if not isinstance(raw, dict):
        raise ConfigError("must be a mapping of settings", where=where)
    unknown = set(raw) - _TOP
    if unknown:
        raise ConfigError(f"unknown settings {sorted(unknown)}; known: {sorted(_TOP)}", where=where)
    specs = raw.get("streams")
    if not isinstance(specs, dict) or not specs:
        raise ConfigError("'streams' must map stream names to their settings", where=where)
    ring = raw.get("ring", DEFAULT_RING)
    if not isinstance(ring, int) or ring < 1:
        raise ConfigError(f"must be a positive integer, got {ring!r}", setting="ring", where=where)
    cluster = raw.get("cluster") or {}
    if not isinstance(cluster, dict):
        raise ConfigError("must be a mapping", setting="cluster", where=where)
    sink = _sink(raw.get("sink", {}), where, None)  # none: no history unless a stream has one
    streams = [
        _stream(str(name), spec, where, sink is not None, base) for name, spec in specs.items()
    ]
    try:
        check_inputs(streams)
    except InputError as exc:
        raise ConfigError(exc.problem, stream=exc.stream, setting="source", where=where) from None
    try:
        state = StateSpec.parse(raw["state"]) if raw.get("state") is not None else None
    except ValueError as exc:
        raise ConfigError(str(exc), setting="state", where=where) from None
    return Config(
        streams=streams,
        state=state,
        scheduler=raw.get("scheduler"),
        state_dir=base / raw.get("state_dir", ".headrace"),
        ring=ring,
        cluster=cluster,
        sink=sink or SinkSpec(),
    )


def _sink(raw: Any, where: str, stream: str | None) -> SinkSpec | None:
    """A sink setting: a mapping, or none/false for no history."""
    if raw is None or raw is False or raw == "none":
        return None
    if not isinstance(raw, dict):
        raise ConfigError(
            f"expected {{url: ..., retention: 30d}} or none, got {raw!r}",
            stream=stream,
            setting="sink",
            where=where,
        )
    try:
        return SinkSpec.parse(raw)
    except ValueError as exc:
        raise ConfigError(str(exc), stream=stream, setting="sink", where=where) from None


def _stream(
    name: str, spec: Any, where: str, history: bool = True, base: Path = Path(".")
) -> Stream:
    if isinstance(spec, str):
        spec = {"source": spec}
    if not isinstance(spec, dict) or "source" not in spec:
        raise ConfigError("needs at least a 'source'", stream=name, where=where)
    unknown = set(spec) - _STREAM
    if unknown:
        raise ConfigError(
            f"unknown settings {sorted(unknown)}; known: {sorted(_STREAM)}",
            stream=name,
            where=where,
        )
    try:
        parser = _parser(spec.get("parser"))
    except (ValueError, TypeError, ImportError, AttributeError) as exc:
        raise ConfigError(str(exc), stream=name, setting="parser", where=where) from None
    try:
        transform = _transform(spec.get("transform", "default"))
    except (ValueError, TypeError, ImportError, AttributeError) as exc:
        raise ConfigError(str(exc), stream=name, setting="transform", where=where) from None
    options = {k: spec[k] for k in _SOURCE_OPTIONS if k in spec}
    _tls_options(options, name, where, base)
    for setting in _TAIL:
        if setting in options:
            try:
                options[setting] = TailOptions.check(setting, options[setting])
            except ValueError as exc:
                message = str(exc).removeprefix(f"{setting}: ")
                raise ConfigError(message, stream=name, setting=setting, where=where) from None
    kwargs: dict[str, Any] = {"interval": spec["interval"]} if "interval" in spec else {}
    if "sink" in spec or not history:
        kwargs["sink"] = _sink(spec.get("sink"), where, name)
    try:
        return Stream(
            name,
            spec["source"],
            parser=parser,
            transform=transform,
            source_options=options,
            **kwargs,
        )
    except ConfigError as exc:
        raise ConfigError(str(exc), where=where) from None


def _tls_options(options: dict, stream: str, where: str, base: Path) -> None:
    """Check ``verify`` and ``ca_file`` here, so that errors name them, not 'source'."""
    verify = options.get("verify", True)
    if not isinstance(verify, bool):  # "maybe", or "false" quoted: never taken as true
        raise ConfigError(
            f"must be true or false, got {verify!r}", stream=stream, setting="verify", where=where
        )
    if "ca_file" not in options:
        return
    ca_file = options["ca_file"]
    if not isinstance(ca_file, str) or not ca_file:
        raise ConfigError(
            f"must be the path of a PEM file of CA certificates, got {ca_file!r}",
            stream=stream,
            setting="ca_file",
            where=where,
        )
    path = base / Path(ca_file).expanduser()  # an absolute path stays as it is
    if not path.is_file():
        raise ConfigError(f"no such file: {path}", stream=stream, setting="ca_file", where=where)
    options["ca_file"] = str(path)


def _import(ref: str) -> Any:
    module, sep, attr = ref.partition(":")
    if not sep:
        raise ValueError(f"expected 'package.module:function', got {ref!r}")
    return getattr(importlib.import_module(module), attr)


def _parser(spec: Any) -> Any:
    if spec is None:
        return RegexParser()
    if isinstance(spec, str):
        return _import(spec)
    if isinstance(spec, dict):
        return RegexParser(**spec)
    raise TypeError(f"expected a mapping of RegexParser options or 'module:function', got {spec!r}")


def _transform(spec: Any) -> Any:
    if spec == "default":
        return Resample()
    if spec is None or spec == "none":
        return None
    if isinstance(spec, str):
        return _import(spec)
    if isinstance(spec, dict) and ("window" in spec or "join" in spec):
        return windows.from_config(spec)
    if isinstance(spec, dict):
        spec = dict(spec)
        period = spec.pop("resample", "25ms")
        return Resample(period, **spec)
    raise TypeError(
        "expected {resample: 25ms, agg: mean}, {window: tumbling, size: 1s, ...}, none or "
        f"'module:function', got {spec!r}"
    )
