"""The package's import structure: every import goes to the same or a lower layer, and no import
runs in a circle (checked on the source, so it covers every module whatever order they are imported in)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import fastrobust

PACKAGE = Path(fastrobust.__file__).parent

# lowest first; a module belongs to the layer of its longest matching name (a package's __init__ to
# the package's name). evaluation.runs evaluates a run folder (checkpoints, data): it sits above the engine.
LAYERS = [
    ("fastrobust", "fastrobust.errors", "fastrobust.config", "fastrobust.factories", "fastrobust.runfolder",
     "fastrobust.trust", "fastrobust.timing"),
    ("fastrobust.attacks",),
    ("fastrobust.data", "fastrobust.models"),
    ("fastrobust.methods",),
    ("fastrobust.evaluation.core", "fastrobust.evaluation.specs", "fastrobust.evaluation.checks",
     "fastrobust.evaluation.autoattack"),
    ("fastrobust.engine",),
    ("fastrobust.evaluation", "fastrobust.evaluation.runs", "fastrobust.fitting", "fastrobust.export",
     "fastrobust.bench", "fastrobust.reports", "fastrobust.demo", "fastrobust.cli", "fastrobust.__main__"),
]

# imports inside a function (run when called, not when the module is imported) that go up a layer:
# the package's own facade (fastrobust.load_model/train/fit), and config.save_yaml's atomic write
LAZY_UPWARD_ALLOWED = {
    ("fastrobust", "fastrobust.engine.checkpoint"), ("fastrobust", "fastrobust.engine"),
    ("fastrobust", "fastrobust.fitting"),
    ("fastrobust.config", "fastrobust.engine.checkpoint"),
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def layer(module: str) -> int:
    best, found = -1, None
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best:
                best, found = len(name), i
    assert found is not None, f"{module} has no layer: add it to LAYERS"
    return found


def _imports(module: str) -> list[tuple[str, bool]]:
    """(imported fastrobust module, at module level?) for every import statement of ``module``."""
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    top_level = {id(node) for node in tree.body}
    # imports under `if TYPE_CHECKING:` / try at module level count as module level
    for node in tree.body:
        if isinstance(node, (ast.If, ast.Try)):
            top_level |= {id(n) for n in ast.walk(node)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            # `from pkg import sub` imports the submodule pkg.sub
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for name in names:
            if name == "fastrobust" or name.startswith("fastrobust."):
                while name not in MODULES:   # a name inside a module: the module
                    name = name.rpartition(".")[0]
                if name != module:
                    found.append((name, id(node) in top_level))
    return found


GRAPH = {m: _imports(m) for m in MODULES}


def test_every_module_has_a_layer():
    for module in MODULES:
        layer(module)


def test_module_level_imports_go_down_the_layers():
    up = [f"{m} (layer {layer(m)}) imports {t} (layer {layer(t)})"
          for m, imports in GRAPH.items() for t, top in imports if top and layer(t) > layer(m)]
    assert not up, "\n".join(up)


def test_imports_inside_functions_go_down_the_layers():
    up = [f"{m} (layer {layer(m)}) imports {t} (layer {layer(t)}) inside a function"
          for m, imports in GRAPH.items() for t, top in imports
          if not top and layer(t) > layer(m) and (m, t) not in LAZY_UPWARD_ALLOWED]
    assert not up, "\n".join(up)


def test_evaluation_does_not_import_the_trainer_and_the_engine_not_evaluation():
    for m, imports in GRAPH.items():
        targets = {t for t, _ in imports}
        if m.startswith("fastrobust.evaluation"):
            assert "fastrobust.engine.trainer" not in targets, m
        if m.startswith("fastrobust.engine"):
            assert not any(t.startswith("fastrobust.evaluation") for t in targets), m


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return out


def _edges(module_level_only: bool) -> dict[str, set[str]]:
    return {m: {t for t, top in imports if top or not module_level_only} for m, imports in GRAPH.items()}


def test_no_import_circle_at_module_level():
    assert _cycles(_edges(module_level_only=True)) == []


def test_no_import_circle_outside_the_facade():
    edges = _edges(module_level_only=False)
    for m in edges:   # the package's facade functions and config.save_yaml import upward on purpose
        edges[m] -= {t for (a, t) in LAZY_UPWARD_ALLOWED if a == m}
    assert _cycles(edges) == []


def test_the_graph_sees_the_imports():
    # the checks above are not vacuous: known edges are found
    assert ("fastrobust.engine.validation", True) in GRAPH["fastrobust.engine.trainer"]
    assert ("fastrobust.engine.device", False) in GRAPH["fastrobust.evaluation.runs"]
    assert ("fastrobust.attacks", True) in GRAPH["fastrobust.engine.validation"]


@pytest.mark.slow
@pytest.mark.parametrize("order", ["lowest-first", "highest-first"])
def test_every_module_imports_in_a_fresh_interpreter(order):
    names = sorted(MODULES, key=layer, reverse=order == "highest-first")
    names = [n for n in names if n != "fastrobust.__main__"]
    code = "import importlib\nfor n in %r:\n    importlib.import_module(n)\n" % names
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
