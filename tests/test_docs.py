"""The docs keep up with the code: their examples run, their links and names resolve.

Every ```python block of README.md and docs/*.md runs in a fresh interpreter, in a
temporary directory, unless the line before its fence is ``<!-- not run: why -->``
(it needs a cluster or an FTP server): those are type-checked with mypy instead. A
failure names the doc and the line (the script is padded so that its line numbers are
the doc's). Relative links must reach files and headings that exist, every
``headrace.*`` dotted name must be a module or a name defined in one, paths of the
repository in code spans must exist, ```yaml blocks must parse, and the module map in
docs/architecture.md must name every module there is.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from helpers import mypy

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]  # docs with examples
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]  # links and names
NOT_RUN = re.compile(r"^<!--\s*not run:.*-->$")
FENCE = re.compile(r"^(`{3,})\s*([\w+-]*)")
# Dotted names in the docs that are not Python: the frame topic, dataset names.
NOT_PYTHON = {"headrace.frames", "headrace.s"}


@dataclass(frozen=True)
class Block:
    doc: Path
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    run: bool  # False: marked <!-- not run: ... -->

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"

    def padded(self) -> str:
        """The code with blank lines before it, so that its line numbers are the doc's."""
        return "\n" * self.line + self.code


def blocks(doc: Path) -> list[Block]:
    found, lines = [], doc.read_text().splitlines()
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        fence, lang, start = opening.group(1), opening.group(2), i
        i += 1
        while i < len(lines) and not lines[i].startswith(fence):
            i += 1
        before = next((s.strip() for s in reversed(lines[:start]) if s.strip()), "")
        code = "\n".join(lines[start + 1 : i]) + "\n"
        found.append(Block(doc, start + 1, lang, code, not NOT_RUN.match(before)))
        i += 1
    return found


def prose(doc: Path) -> str:
    """The doc without its fenced blocks (code spans kept)."""
    out, inside = [], None
    for line in doc.read_text().splitlines():
        opening = FENCE.match(line)
        if inside is None and opening:
            inside = opening.group(1)
        elif inside is not None and line.startswith(inside):
            inside = None
        elif inside is None:
            out.append(line)
    return "\n".join(out)


PYTHON = [b for doc in EXAMPLES for b in blocks(doc) if b.lang == "python"]
SLOW = ("LocalCluster", "sqlalchemy")  # examples that start a cluster or a database
RUNNABLE = [
    pytest.param(b, id=b.where, marks=[pytest.mark.slow] if any(s in b.code for s in SLOW) else [])
    for b in PYTHON
    if b.run
]


def test_there_are_examples_of_both_kinds():
    assert len(RUNNABLE) >= 5, [b.where for b in PYTHON]
    assert any(not b.run for b in PYTHON)
    readme = blocks(ROOT / "README.md")
    assert any(b.lang == "python" for b in readme)


def test_the_readme_stays_short():
    lines = len((ROOT / "README.md").read_text().splitlines())
    assert lines <= 200, f"README.md has {lines} lines: move the detail to docs/"


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path}  # this checkout's headrace, links and all


@pytest.mark.parametrize("block", RUNNABLE)
def test_example_runs(block: Block, tmp_path: Path) -> None:
    script = tmp_path / f"{block.doc.name}.py"
    script.write_text(block.padded())
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=_env(),
        timeout=180,
    )
    assert done.returncode == 0, (
        f"the example at {block.where} failed (line numbers are the doc's):\n{done.stderr}"
    )


@pytest.mark.slow
def test_examples_that_need_a_cluster_type_check(tmp_path: Path) -> None:
    files = {}
    for block in (b for b in PYTHON if not b.run):
        name = re.sub(r"\W", "_", f"{block.doc.relative_to(ROOT)}_L{block.line}")
        (tmp_path / f"{name}.py").write_text(block.padded())
        files[name] = block.where
    checked = mypy([f"{name}.py" for name in files], tmp_path, timeout=300)
    report = checked.stdout + checked.stderr
    for name, where in files.items():  # name each error's doc and example
        report = report.replace(f"{name}.py", f"{where} ({name}.py)")
    assert checked.returncode == 0, f"line numbers are the doc's:\n{report}"


@pytest.mark.parametrize(
    "block",
    [b for doc in DOCS for b in blocks(doc) if b.lang == "yaml"],
    ids=lambda b: b.where,
)
def test_yaml_examples_parse(block: Block) -> None:
    try:
        yaml.safe_load(block.code)
    except yaml.YAMLError as exc:
        pytest.fail(f"{block.where}: {exc}")


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    found: set[str] = set()
    for line in prose(doc).splitlines():
        if line.startswith("#"):
            base = slug(line.lstrip("#"))
            name, n = base, 0
            while name in found:  # GitHub numbers repeated headings
                n += 1
                name = f"{base}-{n}"
            found.add(name)
    return found


def without_code_spans(text: str) -> str:
    return re.sub(r"`[^`\n]*`", "``", text)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_reach_files_and_headings(doc: Path) -> None:
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", without_code_spans(prose(doc))):
        if re.match(r"^[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file.relative_to(ROOT)}")
    assert not broken, f"{doc.relative_to(ROOT)}: {broken}"


def _defined(path: Path) -> dict[str, ast.AST]:
    """Names a module's source defines at top level (``__all__`` included)."""
    names: dict[str, ast.AST] = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names[node.name] = node
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                if isinstance(t, ast.Name):
                    names[t.id] = node
                    if t.id == "__all__" and node.value is not None:
                        names.update(dict.fromkeys(ast.literal_eval(node.value), node))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                names[alias.asname or alias.name.split(".")[0]] = node
    return names


def resolves(dotted: str) -> bool:
    """A module, or a name (and a class's attribute) defined in one; modules not run."""
    parts = dotted.split(".")
    spec = importlib.util.find_spec(parts[0])
    i = 1
    while spec is not None and spec.submodule_search_locations and i < len(parts):
        sub = importlib.util.find_spec(".".join(parts[: i + 1]))  # imports packages only
        if sub is None:
            break
        spec, i = sub, i + 1
    rest = parts[i:]
    if spec is None or not rest:
        return spec is not None
    if spec.origin is None:
        return False
    node = _defined(Path(spec.origin)).get(rest[0])
    if node is None or len(rest) == 1 or not isinstance(node, ast.ClassDef):
        return node is not None
    members = set()
    for n in node.body:
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            members.add(n.name)
        elif isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name):
            members.add(n.target.id)
        elif isinstance(n, ast.Assign):
            members.update(t.id for t in n.targets if isinstance(t, ast.Name))
    return rest[1] in members


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_module_names_and_paths_exist(doc: Path) -> None:
    text = prose(doc) + "".join(b.code for b in blocks(doc) if b.lang == "python")
    names = set(re.findall(r"(?<![\w/.-])headrace(?:\.[A-Za-z_]\w*)+", text)) - NOT_PYTHON
    wrong = sorted(n for n in names if not resolves(n))
    spans = re.findall(r"`([^`\n]+)`", prose(doc))
    old = [s for s in spans if re.match(r"^(etl|app|cluster)\.[a-z_]+", s)]
    paths = [
        s for s in spans if re.fullmatch(r"(etl|app|cluster|tests|benchmarks|docs)/[\w./-]*", s)
    ]
    missing = [p for p in paths if not (ROOT / p).exists()]
    problems = [
        *(f"no such module or name: {n}" for n in wrong),
        *(f"an old module name (now headrace.*): {s}" for s in old),
        *(f"no such file or folder: {p}" for p in missing),
    ]
    assert not problems, f"{doc.relative_to(ROOT)}: {problems}"


def test_the_module_map_lists_every_module():
    """docs/architecture.md's tree names every module and folder there is, and no other."""
    doc = ROOT / "docs" / "architecture.md"
    tree = next(b for b in blocks(doc) if b.code.startswith("headrace/__init__.py"))
    listed, folders = set(), []
    for line in tree.code.splitlines():
        depth = (len(line) - len(line.lstrip())) // 2
        if not line.strip() or depth > len(folders):  # a description's second line
            continue
        name = line.split()[0]
        folders = folders[:depth]
        listed.add("/".join([*folders, name.rstrip("/")]))
        if name.endswith("/"):
            folders.append(name.rstrip("/"))
    there = {
        str(p.relative_to(ROOT))
        for pkg in ("etl", "app", "cluster")
        for p in (ROOT / pkg).rglob("*")
        if p.suffix in (".py", ".html") or (p.is_dir() and p.name != "__pycache__")
    }
    unlisted = sorted(p for p in there - listed if not p.endswith("__init__.py"))
    gone = sorted(p for p in listed if not (ROOT / p).exists())
    assert not unlisted, f"{doc.relative_to(ROOT)}: add to the module map: {unlisted}"
    assert not gone, f"{doc.relative_to(ROOT)}: the module map lists what is not there: {gone}"
