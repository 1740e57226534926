"""Streams from YAML and from Python: what is accepted, and errors that name the place."""

from __future__ import annotations

import pytest

from etl.config import load, parse
from etl.ftp import FTPSource
from etl.regexparser import RegexParser
from etl.sources import FileSource
from etl.streams import ConfigError, Stream
from etl.transforms import Map, Resample


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
