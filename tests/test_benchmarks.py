"""The benchmarks' own code keeps up with the code it measures (tiny runs, no figures judged)."""

from __future__ import annotations

from benchmarks import hvcost, parser


def test_parser_benchmark_runs_every_case():
    result = parser.run(lines=5_000, repeats=1)
    for case in ("headrace", "pandas", "headrace_parse_only", "pandas_parse_only"):
        assert "error" not in result[case], result[case]
        assert result[case]["rows"] > 0
    assert result["headrace_parse_only"]["rows"] == 5_000


def test_hv_benchmark_runs_every_plot():
    result = hvcost.run(updates=5, rows=2, repeats=1)
    assert "error" not in result, result
    assert result["headrace_ms"] > 0 and result["raw_ms"] > 0
