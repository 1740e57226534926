"""Streams from YAML and from Python: what is accepted, and errors that name the place."""

from __future__ import annotations

import pytest

from headrace.etl.config import load, parse
from headrace.etl.parse.regex import RegexParser
from headrace.etl.sources.base import TailOptions
from headrace.etl.sources.ftp import FTPSource
from headrace.etl.sources.local import FileSource
from headrace.etl.streams import ConfigError, Stream
from headrace.etl.transforms import Map, Resample


def test_yaml_config_builds_streams(tmp_path):
    path = tmp_path / "etl.yaml"
    path.write_text(
        """
ring: 16
state_dir: state
streams:
  cpu:
    source: ftp://reader@127.0.0.1:2121/cpu.log
    interval: 0.5
    timeout: 3
    parser: {pattern: '^(?P<time>\\S+),(?P<value>\\S+)$', time_format: epoch}
    transform: {resample: 100ms, agg: max}
  raw:
    source: /var/log/raw.log
    transform: none
"""
    )
    config = load(path)
    assert config.ring == 16 and config.state_dir == tmp_path / "state"
    cpu, raw = config.streams
    assert cpu.name == "cpu" and cpu.interval == 0.5
    assert isinstance(cpu.source, FTPSource) and isinstance(cpu.parser, RegexParser)
    assert isinstance(cpu.transform, Resample) and "max" in repr(cpu.transform)
    assert isinstance(raw.source, FileSource) and not isinstance(raw.transform, Resample)


@pytest.mark.parametrize(
    ("streams", "names"),
    [
        ({"Bad Name": {"source": "/x.log"}}, ["'Bad Name'", "'name'"]),
        ({"cpu": {"source": "/x.log", "interval": -1}}, ["'cpu'", "'interval'"]),
        ({"cpu": {"source": "gopher://x/y"}}, ["'cpu'", "'source'"]),
        (
            {"cpu": {"source": "/x.log", "parser": {"pattern": "(?P<time>.*)"}}},
            ["'cpu'", "'parser'", "value"],
        ),
        (
            {"cpu": {"source": "/x.log", "parser": {"max_future": "soon"}}},
            ["'cpu'", "'parser'", "max_future", "'soon'"],
        ),
        (
            {"cpu": {"source": "/x.log", "transform": {"agg": "median-ish"}}},
            ["'cpu'", "'transform'", "median-ish"],
        ),
        (
            {"cpu": {"source": "/x.log", "parser": "nowhere.mod:fn"}},
            ["'cpu'", "'parser'", "nowhere"],
        ),
        ({"cpu": {"source": "/x.log", "intervall": 1}}, ["'cpu'", "intervall"]),
        ({"cpu": {"interval": 1}}, ["'cpu'", "source"]),
    ],
)
def test_errors_name_the_file_stream_and_setting(tmp_path, streams, names):
    with pytest.raises(ConfigError) as err:
        parse({"streams": streams}, where="etl.yaml")
    message = str(err.value)
    assert message.startswith("etl.yaml: ")
    for name in names:
        assert name in message, message


def test_top_level_errors():
    with pytest.raises(ConfigError, match="'ring'"):
        parse({"ring": 0, "streams": {"a": "/x.log"}})
    with pytest.raises(ConfigError, match="streams"):
        parse({"streams": []})
    with pytest.raises(ConfigError, match="unknown settings"):
        parse({"stream": {}})


def test_python_streams_accept_plain_functions():
    def parse_fn(data: bytes):  # a user's own extract
        raise NotImplementedError

    def smooth(frame):  # a user's own transform
        return frame

    stream = Stream("mine", "/var/log/mine.log", parser=parse_fn, transform=smooth, interval=1)
    assert stream.parser.fn is parse_fn and isinstance(stream.transform, Map)
    with pytest.raises(ConfigError, match=r"'mine'.*'parser'"):
        Stream("mine", "/var/log/mine.log", parser=42)


def test_rotation_and_first_read_options_reach_the_sources():
    config = parse(
        {
            "streams": {
                "a": {
                    "source": "/var/log/a.log",
                    "rotated": "{name}.0",
                    "start": "end",
                    "max_first_read": "1MiB",
                    "max_line": 65536,
                },
                "b": {"source": "ftp://r@127.0.0.1:2121/logs/b.log", "rotated": "none"},
                "c": {"source": "ftp://r@127.0.0.1:2121/logs/c.log", "max_first_read": 0},
                "d": "/var/log/d.log",
            }
        }
    )
    a, b, c, d = (s.source for s in config.streams)
    assert a.options == TailOptions("{name}.0", "end", 1 << 20, 65536)
    assert a.rotated == "/var/log/a.log.0"
    assert b.options.rotated is None and b.rotated is None
    assert c.options.max_first_read == 0 and c.rotated == "logs/c.log.1"
    assert d.options == TailOptions("{name}.1", "beginning", 16 << 20, 4 << 20)  # defaults
    assert d.rotated == "/var/log/d.log.1"


@pytest.mark.parametrize(
    ("setting", "value", "says"),
    [
        ("rotated", "{nam}.1", "{name}"),
        ("rotated", "{name}", "{name}"),
        ("rotated", 1, "{name}"),
        ("start", "middle", "beginning or end"),
        ("max_first_read", -1, "number of bytes"),
        ("max_first_read", "lots", "number of bytes"),
        ("max_line", 0, "positive number of bytes"),
        ("max_line", True, "positive number of bytes"),
    ],
)
def test_bad_rotation_options_name_the_stream_and_setting(setting, value, says):
    with pytest.raises(ConfigError) as err:
        parse({"streams": {"cpu": {"source": "/x.log", setting: value}}}, where="etl.yaml")
    message = str(err.value)
    assert message.startswith(f"etl.yaml: stream 'cpu': setting '{setting}': "), message
    assert says in message and repr(value) in message


def test_rotation_options_checked_for_python_streams_too():
    with pytest.raises(ConfigError, match=r"'mine'.*'source'.*max_line"):
        Stream("mine", "/var/log/mine.log", source_options={"max_line": 0})
