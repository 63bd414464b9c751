"""The package's import graph: floors that only look down, and no import circles.

Every ``import``/``from ... import`` of a ``freqmerge_viz`` module is an edge, at module level,
inside a function (still a dependency, only a late one) or under ``if TYPE_CHECKING:`` (a
dependency of the types) alike, between modules of one package as between packages.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "freqmerge_viz"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """``module -> modules it imports`` over the package (names like ``freqmerge_viz.io``)."""
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                if not source.startswith("freqmerge_viz"):
                    continue
                for alias in node.names:
                    candidate = f"{source}.{alias.name}"
                    targets.add(candidate if candidate in paths else source)
            elif isinstance(node, ast.Import):
                targets.update(a.name for a in node.names if a.name.startswith("freqmerge_viz"))
        targets = {t for t in targets if t in paths and t != name}
        # importing a.b.c first runs the package a.b: an edge too, unless a.b encloses the importer
        for target in list(targets):
            parts = target.split(".")
            for depth in range(2, len(parts)):
                package_name = ".".join(parts[:depth])
                if package_name in paths and not name.startswith(package_name + ".") and package_name != name:
                    targets.add(package_name)
        graph[name] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_imports_at_every_level():
    graph = import_graph()
    assert "freqmerge_viz.io" in graph["freqmerge_viz.merge_job"]
    assert "freqmerge_viz.outputs" in graph["freqmerge_viz.io"]
    assert "freqmerge_viz.spectral.masks" in graph["freqmerge_viz.spectral.spec"]
    assert "freqmerge_viz.spectral.spec" not in graph["freqmerge_viz.spectral.masks"]
    assert "freqmerge_viz.spectral.masks" in graph["freqmerge_viz.spectral.filters"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert "freqmerge_viz.methods" in graph["freqmerge_viz.analysis.sweeps"]  # via methods.fr: runs methods/__init__


def test_no_import_circles():
    assert cycles(import_graph()) == []


def test_type_checking_imports_count(tmp_path, monkeypatch):
    package = tmp_path / "freqmerge_viz"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import B\n")
    (package / "b.py").write_text("from .a import A\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", package)
    assert cycles(import_graph()) == [["freqmerge_viz.a", "freqmerge_viz.b"]]


def test_analysis_and_plots_do_not_import_each_other():
    graph = import_graph()
    wrong = [(a, b) for a, targets in graph.items() for b in targets
             if (a.startswith("freqmerge_viz.analysis") and b.startswith("freqmerge_viz.plots"))
             or (a.startswith("freqmerge_viz.plots") and (b.startswith("freqmerge_viz.analysis")
                                                         or b == "freqmerge_viz.report"))]
    assert wrong == []


def test_lower_floors_never_import_upper_ones():
    """io, outputs, errors, spectral, metrics and taskvector do not import methods, analysis,
    plots, widgets, topics or the command line."""
    graph = import_graph()
    lower = ("freqmerge_viz.io", "freqmerge_viz.pickled", "freqmerge_viz.outputs", "freqmerge_viz.errors",
             "freqmerge_viz.spectral", "freqmerge_viz.metrics", "freqmerge_viz.taskvector", "freqmerge_viz.backend",
             "freqmerge_viz.keys", "freqmerge_viz.progress", "freqmerge_viz.singular", "freqmerge_viz.cutoff_rules",
             "freqmerge_viz.scopes")
    upper = ("freqmerge_viz.methods", "freqmerge_viz.analysis", "freqmerge_viz.plots", "freqmerge_viz.widgets",
             "freqmerge_viz.topics", "freqmerge_viz.cli", "freqmerge_viz.report", "freqmerge_viz.figures")
    wrong = [(a, b) for a, targets in graph.items() if a.startswith(lower) for b in targets if b.startswith(upper)]
    assert wrong == []


def test_worked_examples_run():
    """docs/architecture.md's worked examples (a method, an analysis, a topic, an explorer) run
    as written, in order, in one namespace."""
    import re

    from freqmerge_viz.methods import base

    doc = (PACKAGE.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    blocks = re.findall(r"<!-- example: (\w+) -->\n```python\n(.*?)```", doc, re.S)
    assert [name for name, _ in blocks] == ["method", "analysis", "topic", "explorer", "study_kind"]
    namespace: dict = {"__name__": "architecture_examples"}
    try:
        for name, code in blocks:
            exec(compile(code, f"docs/architecture.md:{name}", "exec"), namespace)  # noqa: S102
    finally:
        base._REGISTRY.pop("signed_median", None)
        from freqmerge_viz.study import KINDS

        KINDS.pop("constant_vectors", None)


def test_analyses_take_a_study_and_never_import_the_zoo():
    """analysis/ reads models, data and forwards through freqmerge_viz.study; the demo zoo is one
    study (a subclass), never imported by an analysis. study/ sits below analysis and never
    imports it, the plots, the widgets or the topics."""
    graph = import_graph()
    into_zoo = [(a, b) for a, targets in graph.items() if a.startswith("freqmerge_viz.analysis")
                for b in targets if b.startswith("freqmerge_viz.zoo")]
    assert into_zoo == []
    upper = ("freqmerge_viz.analysis", "freqmerge_viz.plots", "freqmerge_viz.widgets", "freqmerge_viz.topics",
             "freqmerge_viz.cli", "freqmerge_viz.figures")
    study_up = [(a, b) for a, targets in graph.items() if a.startswith("freqmerge_viz.study")
                for b in targets if b.startswith(upper)]
    assert study_up == []
    assert "freqmerge_viz.study" in graph["freqmerge_viz.analysis.evaluation"]
