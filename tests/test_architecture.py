"""The layers of src/locallearn, read from the source with ``ast``: the import graph has no cycle, and every
edge points down (docs/architecture.md):

    cli → commands → distributed → training → core        bench → distributed → training → core
    core: models, split, heads, losses, context, decoders, methods, config, net, engine, memory, data, ...

Imports under ``if TYPE_CHECKING:`` are left out (they never run); imports inside functions count."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "locallearn"
TOP = ("bench", "training", "distributed", "cli", "commands", "__main__")  # everything else is the core
ALLOWED = {  # layer → the upper layers it may import
    "core": set(),
    "bench": {"training", "distributed"},
    "training": set(),
    "distributed": {"training"},
    "commands": {"training", "distributed"},
    "cli": {"commands", "bench", "training", "distributed"},
    "__main__": {"cli"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in TOP else "core"


def _type_checking_blocks(tree: ast.AST) -> set[int]:
    """ids of import nodes inside ``if TYPE_CHECKING:``."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(n) for child in node.body for n in ast.walk(child)}
    return skipped


def imports(module: str) -> set[str]:
    """The locallearn modules ``module`` imports (a name imported from a package counts as the submodule of
    that name where there is one, else as the package)."""
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    skipped = _type_checking_blocks(tree)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "locallearn"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] != "locallearn":
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in MODULES else base)
    return {m for m in found if m in MODULES and m != module}


GRAPH = {m: imports(m) for m in MODULES}


def test_the_graph_is_read():
    assert {"locallearn.net", "locallearn.engine", "locallearn.training.fit", "locallearn.distributed.runner"} <= set(MODULES)
    assert "locallearn.config" in GRAPH["locallearn.net"] and "locallearn.net" in GRAPH["locallearn.engine"]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_edges_point_down(module):
    own = layer(module)
    for target in GRAPH[module]:
        other = layer(target)
        if other != own and other != "core":
            assert other in ALLOWED[own], f"{module} ({own}) imports {target} ({other})"
        if own == "core":
            assert other == "core", f"the core module {module} imports {target} ({other})"


def test_no_cycles():
    """Depth-first search over the whole graph; the first cycle found is named."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for n in sorted(GRAPH[m]):
            if state.get(n) == 1:
                cycle = path[path.index(n):] + [n]
                raise AssertionError("import cycle: " + " → ".join(cycle))
            if n not in state:
                visit(n)
        path.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)


NOT_OPTIMIZERS = {"case", "c"}  # bench.runner's Case objects, whose step() is one engine.train_step


def test_only_the_engine_steps():
    """backward() and optimizer.step() are called in engine.py only (docs/architecture.md)."""
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text())
        calls = {node.func.attr for node in ast.walk(tree)
                 if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)}
        if module != "locallearn.engine":
            assert "backward" not in calls, f"{module} calls backward()"
            # every .step() call, whatever its receiver is named, but the benchmark's cases (a Case's step runs
            # engine.train_step)
            steps = [ast.unparse(node) for node in ast.walk(tree) if isinstance(node, ast.Call)
                     and isinstance(node.func, ast.Attribute) and node.func.attr == "step"
                     and ast.unparse(node.func.value) not in NOT_OPTIMIZERS]
            assert not steps, f"{module} calls {steps[0]}: an optimizer steps in engine.py only"
