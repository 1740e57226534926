"""The layering the folders promise, over every module of the one ``headrace`` package.

etl is a library that imports neither app nor cluster; app reads only the contract from
etl; no import cycle anywhere (imports inside functions and under TYPE_CHECKING count);
modules stay small; every module logs under its own name; the folders are importable
only as ``headrace.*``.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import mypy

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("etl", "app", "cluster")
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(("headrace", *parts))


MODULES = {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))} | {
    "headrace": ROOT / "headrace" / "__init__.py"
}


def imports(name: str) -> set[str]:
    """headrace modules that module ``name`` imports, wherever in it (functions included)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            found.add(module)
            # ``from a import b``: an edge to a.b when b is a module, else to a
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: imports(name) for name in MODULES}


def _ids(p: Path) -> str:
    return str(p.relative_to(ROOT))


def test_every_folder_is_a_package():
    for pkg in PACKAGES:
        for folder in [ROOT / pkg, *(p for p in (ROOT / pkg).rglob("*") if p.is_dir())]:
            if folder.name in ("__pycache__", "grafana"):
                continue
            assert (folder / "__init__.py").exists(), f"{folder.relative_to(ROOT)} has no __init__"


def test_the_package_links_to_the_folders():
    for pkg in PACKAGES:
        link = ROOT / "headrace" / pkg
        assert link.is_symlink() and link.resolve() == ROOT / pkg, f"headrace/{pkg}"


@pytest.mark.parametrize("name", [m for m in MODULES if m.startswith("headrace.etl")])
def test_etl_imports_neither_cluster_nor_app(name: str) -> None:
    bad = {m for m in GRAPH[name] if m.startswith(("headrace.cluster", "headrace.app"))}
    assert not bad, f"{name} imports {sorted(bad)}"


@pytest.mark.parametrize("name", [m for m in MODULES if m.startswith("headrace.app")])
def test_app_imports_only_the_contract_from_etl(name: str) -> None:
    from_etl = {m for m in GRAPH[name] if m.startswith("headrace.etl")}
    other = {m for m in from_etl if not m.startswith("headrace.etl.contract")} - {"headrace.etl"}
    assert not other, f"{name} imports {sorted(other)}"
    assert not {m for m in GRAPH[name] if m.startswith("headrace.cluster")}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle():
    assert cycles(GRAPH) == []


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize(
    "path",
    [*MODULES.values(), *sorted((ROOT / "benchmarks").glob("*.py"))],
    ids=_ids,
)
def test_modules_stay_small(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)} has {lines} lines"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_one_logger_per_module_named_after_it(name: str) -> None:
    """``logging.getLogger(__name__)``: every logger is under ``headrace`` and says where."""
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            call = node.value
            if getattr(call.func, "attr", None) == "getLogger":
                targets = [getattr(t, "id", None) for t in node.targets]
                if "log" in targets:
                    assert [getattr(a, "id", None) for a in call.args] == ["__name__"], name


@pytest.mark.parametrize("pkg", PACKAGES)
def test_the_folders_are_not_importable_by_their_own_names(pkg: str) -> None:
    """From a checkout's root (on sys.path first) ``import etl`` would load a second copy."""
    found = subprocess.run(
        [sys.executable, "-c", f"import {pkg}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": ""},
        timeout=60,
    )
    assert found.returncode != 0
    assert f"import headrace.{pkg}" in found.stderr, found.stderr


def test_importing_headrace_loads_neither_dask_nor_panel():
    probe = (
        "import sys, headrace; print(sorted({'distributed', 'panel', 'dask'} & set(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd="/", capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_public_api_resolves():
    import headrace

    for name in headrace.__all__:
        assert getattr(headrace, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        headrace.nope  # noqa: B018


@pytest.mark.slow  # mypy
def test_readme_python_example_type_checks(tmp_path: Path) -> None:
    """The README's "Streams in Python" example against the Parser and Transform types."""
    text = (ROOT / "README.md").read_text()
    start = text.index("```python\n", text.index("### Streams in Python")) + len("```python\n")
    example = tmp_path / "example.py"
    # reveal_type proves mypy found headrace itself (not an Any from a missing import)
    example.write_text(text[start : text.index("```", start)] + "reveal_type(Stream)\n")
    checked = mypy([example.name], tmp_path, timeout=240)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "headrace.etl.streams.Stream" in checked.stdout, checked.stdout
