"""The architecture, checked: heavy dependencies stay at the edges and no module of the
harness imports itself back.

- mlflow only in study/tracking/; optuna only in study/sweep/; seaborn only in analyses/.
- No import circle between the harness's modules, counting every import statement (at
  module level or inside a function: a lazy import that closes a circle is a circle).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("study", "analyses")


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def imported(path: Path, name: str) -> set[str]:
    """Every module named by an import statement in the file, made absolute. `from a.b
    import c` names a.b.c when c is a module of the harness, else a.b (a package's own
    __init__ running first is Python's doing, not a dependency)."""
    mods = modules()
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                pkg = pkg[:len(pkg) - node.level + 1]
                base = ".".join(pkg + ([base] if base else []))
            for a in node.names:
                out.add(f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base)
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: {i for i in imported(p, m) if i in mods and i != m} for m, p in mods.items()}


def test_the_graph_sees_every_module():
    mods = modules()
    assert {"study.tracking", "study.runner", "study.train", "study.engine.cells",
            "study.probes", "study.sweep", "analyses.report"} <= set(mods)
    assert "study.train" in graph()["study.runner"]


@pytest.mark.parametrize("library,allowed", [
    ("mlflow", lambda m: m == "study.tracking" or m.startswith("study.tracking.")),
    ("optuna", lambda m: m == "study.sweep" or m.startswith("study.sweep.")),
    ("seaborn", lambda m: m == "analyses" or m.startswith("analyses.")),
])
def test_heavy_dependencies_stay_at_the_edges(library, allowed):
    offenders = sorted(m for m, p in modules().items()
                       if any(i == library or i.startswith(library + ".")
                              for i in imported(p, m)) and not allowed(m))
    assert offenders == [], f"{library} imported outside its home by {offenders}"


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    """One import circle of the graph as a path [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(g.get(m, ())):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (found := visit(n)) is not None:
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(g):
        if m not in state and (found := visit(m)) is not None:
            return found
    return None


def test_there_is_no_import_circle():
    cycle = find_cycle(graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_circle_finder_finds_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
