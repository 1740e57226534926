"""The layering the folders promise: etl a library, app reads only the contract, small modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("etl", "app", "cluster")
MAX_LINES = 400


def imports(path: Path) -> set[str]:
    """Modules ``path`` imports (absolute names; relative ones resolved within its package)."""
    package = path.parent.name
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).glob("*.py"))


@pytest.mark.parametrize("path", modules("etl"), ids=lambda p: p.name)
def test_etl_imports_neither_cluster_nor_app(path: Path) -> None:
    bad = {m for m in imports(path) if m.split(".")[0] in ("cluster", "app")}
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


@pytest.mark.parametrize("path", modules("app"), ids=lambda p: p.name)
def test_app_imports_only_the_contract_from_etl(path: Path) -> None:
    from_etl = {m for m in imports(path) if m.split(".")[0] == "etl"}
    other = {
        m
        for m in from_etl
        if m not in ("etl", "etl.contract") and not m.startswith("etl.contract.")
    }
    assert not other, f"{path.relative_to(ROOT)} imports {sorted(other)}"
    assert not {m for m in imports(path) if m.split(".")[0] == "cluster"}


@pytest.mark.parametrize(
    "path",
    [p for pkg in (*PACKAGES, "benchmarks") for p in modules(pkg)],
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_modules_stay_small(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)} has {lines} lines"


def test_readme_python_example_type_checks(tmp_path: Path) -> None:
    """The README's "Streams in Python" example against the Parser and Transform types."""
    import os
    import subprocess
    import sys

    text = (ROOT / "README.md").read_text()
    start = text.index("```python\n", text.index("### Streams in Python")) + len("```python\n")
    example = tmp_path / "example.py"
    example.write_text(text[start : text.index("```", start)])
    checked = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--ignore-missing-imports",
            "--follow-imports=silent",
            f"--cache-dir={tmp_path / 'cache'}",
            str(example),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "MYPYPATH": str(ROOT)},
        timeout=240,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
