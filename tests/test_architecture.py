"""The package structure, read from the source with ``ast`` (nothing is imported):

- the module import graph has no cycles (imports inside functions count: they are deferred, not
  absent; imports under ``if TYPE_CHECKING:`` do not, since they never run);
- the layers only import downwards: core and envs at the bottom (core/config.py asks envs about games
  and levels; envs sees the config schema only under TYPE_CHECKING), then agents, evaluation,
  training, launch, and the entry points train.py and eval.py on top;
- the source refers to no documents outside the repository.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "envs", "agents", "training", "launch", "evaluation")
SCRIPTS = ("train.py", "eval.py", "compare.py")

# package -> packages it must never import (TYPE_CHECKING imports excluded).
FORBIDDEN = {
    "core": ("agents", "training", "launch", "evaluation"),
    "envs": ("agents", "training", "launch", "evaluation"),
    "agents": ("training", "launch", "evaluation"),
    "evaluation": ("training", "launch"),
    "training": ("launch",),
}
# A Markdown file named in code, configs or docs, and a path that climbs out of the repository.
MARKDOWN_NAME = re.compile(r"[\w./-]*\.md\b")
OUTSIDE = re.compile(r"(?<![\w.])\.\./")


def source_files() -> dict[str, Path]:
    """Module name -> file, for every package module and the two scripts."""
    files = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            files[".".join(parts)] = path
    for script in SCRIPTS:
        files[Path(script).stem] = ROOT / script
    return files


MODULES = source_files()


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class ImportCollector(ast.NodeVisitor):
    """(line, imported name) of every import statement that runs, at any depth."""

    def __init__(self, module: str, is_package: bool) -> None:
        self.module, self.is_package = module, is_package
        self.found: list[tuple[int, str]] = []

    def visit_If(self, node: ast.If) -> None:
        if is_type_checking(node.test):
            for child in node.orelse:  # the else branch does run
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.found += [(node.lineno, alias.name) for alias in node.names]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:  # relative: resolve against this module's package
            package = self.module.split(".")
            if not self.is_package:
                package = package[:-1]
            package = package[: len(package) - (node.level - 1)]
            base = ".".join(package + ([base] if base else []))
        for alias in node.names:
            # ``from pkg import mod`` imports the module pkg.mod when there is one.
            full = f"{base}.{alias.name}" if base else alias.name
            self.found.append((node.lineno, full if full in MODULES else base))


def internal_imports(module: str) -> list[tuple[int, str]]:
    """(line, internal module) pairs: imports of anything outside the project are dropped."""
    path = MODULES[module]
    collector = ImportCollector(module, path.name == "__init__.py")
    collector.visit(ast.parse(path.read_text(), filename=str(path)))
    out = []
    for line, name in collector.found:
        parts = name.split(".")
        while parts and ".".join(parts) not in MODULES:  # ``import a.b.c`` of a non-module attribute
            parts.pop()
        if parts:
            out.append((line, ".".join(parts)))
    return out


GRAPH = {m: sorted({target for _, target in internal_imports(m)} - {m}) for m in MODULES}


def find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (iterative DFS, white/grey/black)."""
    colour = dict.fromkeys(graph, 0)
    for start in graph:
        if colour[start]:
            continue
        stack, path = [(start, iter(graph[start]))], [start]
        colour[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                colour[node] = 2
                stack.pop()
                path.pop()
            elif colour[child] == 1:
                return path[path.index(child):] + [child]
            elif colour[child] == 0:
                colour[child] = 1
                stack.append((child, iter(graph[child])))
                path.append(child)
    return None


def test_the_graph_is_real() -> None:
    """Guards against a vacuous pass: the walk finds the modules and the edges we know of."""
    for m in ("core.config", "core.checkpoint", "envs.make", "agents.controller", "training.loop",
              "training.engines.sb3", "launch.jobs", "evaluation.evaluate", "train", "eval"):
        assert m in GRAPH, m
    assert "training.loop" in GRAPH["launch.jobs"]
    assert "training.explorer_learner" in GRAPH["launch.jobs"]  # imported inside a function
    assert "launch.ray_trials" in GRAPH["launch.run"]  # likewise
    assert "core.config" not in GRAPH["envs.make"]  # only under TYPE_CHECKING
    assert "training.checkpointing" in GRAPH["launch.jobs"]  # ``from training import checkpointing``
    assert sum(map(len, GRAPH.values())) > 50


def test_find_cycle_finds_cycles() -> None:
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"], "d": []}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": ["b", "c"], "b": ["c"], "c": []}) is None


def test_no_import_cycles() -> None:
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_layers_import_downwards(package: str) -> None:
    forbidden = FORBIDDEN[package]
    bad = [
        f"{MODULES[m].relative_to(ROOT)}:{line} imports {target}"
        for m in MODULES if m.split(".")[0] == package
        for line, target in internal_imports(m) if target.split(".")[0] in forbidden
    ]
    assert not bad, f"{package} must not import {forbidden}:\n" + "\n".join(bad)


def test_no_references_to_documents_outside_the_repository() -> None:
    """Code, configs and docs point at documents a clone has (README.md, docs/*.md), never at
    files outside the repository."""
    texts = [*MODULES.values(), ROOT / "README.md", *(ROOT / "configs").glob("*.yaml"),
             *(ROOT / "docs").glob("*.md"), *(ROOT / "benchmarks").glob("*.py")]
    have = {p.name for p in ROOT.rglob("*.md") if ".venv" not in p.parts and ".git" not in p.parts}
    assert {"README.md", "architecture.md", "expgen.md"} <= have
    have |= {"results.md", "curves.md"}  # reports eval.py and benchmarks/precision_check.py write under runs/
    bad = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in texts if path != Path(__file__)
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if OUTSIDE.search(line) or any(Path(m).name not in have for m in MARKDOWN_NAME.findall(line))
    ]
    assert not bad, "\n".join(bad)


def test_the_reference_check_sees_foreign_documents() -> None:
    """The check above is not vacuous: it flags an unknown document and a path out of the repo."""
    have = {"README.md", "expgen.md"}
    assert [Path(m).name for m in MARKDOWN_NAME.findall("see docs/expgen.md and NOTES.md")] == ["expgen.md", "NOTES.md"]
    assert not {"expgen.md", "NOTES.md"} <= have
    assert OUTSIDE.search("read ../elsewhere/file") and not OUTSIDE.search("a.../b or x../y")
