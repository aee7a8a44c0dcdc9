"""The layers of ARCHITECTURE.md, checked: nothing imports upward and no two modules import each other in a
circle. Imports are read with `ast`, function-local ones included, so a lazy import cannot hide an edge."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "forgeflow"

# Lowest first. A module may import its own package and anything of a lower rank; packages of one rank do
# not import each other. Within a layer of ARCHITECTURE.md the ranks say which way imports go.
RANKS: dict[str, int] = {
    "errors": 0,
    "names": 1, "processes": 1, "chat": 1, "yamlfile": 1, "jsonbody": 1, "raycluster": 1,
    "store": 2,
    "data": 3,
    "inference": 4,
    "registry": 5,
    "training": 6,
    "serving": 7, "flows": 7,
    "evaluation": 8,
    "api": 9,
    "studio": 10, "client": 10,
    "cli": 11,
}
# The composition root mounts every router and page; it is the one module allowed to name the top layer.
COMPOSITION_ROOT = "forgeflow.api.app"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every forgeflow module or name a file imports, wherever the import statement stands."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "forgeflow")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "forgeflow":
                found.add(target)
                found.update(f"{target}.{a.name}" for a in node.names)
    return found


def graph() -> dict[str, set[str]]:
    files = [p for p in SRC.rglob("*.py") if "examples" not in p.relative_to(SRC).parts]
    modules = {module_name(p): p for p in files}
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for imported in imports_of(path):
            # `from forgeflow.x import y` names module x.y when y is a module, else module x
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            if imported and imported != name and imported != "forgeflow":
                targets.add(imported)
        edges[name] = targets
    return edges


def top_package(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


def test_every_package_has_a_rank():
    packages = {top_package(m) for m in graph()} - {""}
    assert packages <= set(RANKS), f"give these a layer in RANKS and ARCHITECTURE.md: {packages - set(RANKS)}"


def test_nothing_imports_upward():
    upward = []
    for module, targets in graph().items():
        if module == COMPOSITION_ROOT or not top_package(module):
            continue
        mine = top_package(module)
        for target in targets:
            theirs = top_package(target)
            if theirs and theirs != mine and RANKS[theirs] >= RANKS[mine]:
                upward.append(f"{module} -> {target}")
    assert not upward, "imports that point up or sideways:\n" + "\n".join(sorted(upward))


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_circle_between_files():
    # A package's __init__ that re-exports its modules is an edge to each of them, so it is read like any file.
    cycle = find_cycle(graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize(("edges", "expected"), [
    ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
])
def test_the_circle_finder_finds_circles(edges, expected):
    assert find_cycle(edges) == expected


def test_function_local_imports_are_read(tmp_path, monkeypatch):
    fake = tmp_path / "forgeflow" / "store"
    fake.mkdir(parents=True)
    (fake / "x.py").write_text("def f():\n    from forgeflow.client import Client\n    from ..api import deps\n")
    monkeypatch.setattr("test_architecture.SRC", tmp_path / "forgeflow")
    assert imports_of(fake / "x.py") >= {"forgeflow.client", "forgeflow.api", "forgeflow.api.deps"}


# One writer per table: the module that owns a table's rows is the only one that inserts, updates or deletes them.
WRITERS = {
    "jobs": {"forgeflow.training.runner"},
    "endpoints": {"forgeflow.serving.endpoints"},
    "deployments": {"forgeflow.serving.endpoints"},
    "connections": {"forgeflow.store.connections"},
    "compute_targets": {"forgeflow.training.compute.targets"},
    "studio_sessions": {"forgeflow.store.sessions"},
    "users": {"forgeflow.store.identity"},
    "access_tokens": {"forgeflow.store.identity"},
    "audit_log": {"forgeflow.store.audit"},
    "servers": {"forgeflow.store.leadership"},
    "deployment_instances": {"forgeflow.serving.instances"},
    "rollouts": {"forgeflow.evaluation.rollout_store"},
}


def writes_of(path: Path) -> set[str]:
    """Tables a file writes: `<anything>.insert/update/delete(TABLE, ...)` with the table as a literal or a
    module-level constant."""
    tree = ast.parse(path.read_text(), str(path))
    constants = {target.id: node.value.value for node in tree.body if isinstance(node, ast.Assign)
                 and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
                 for target in node.targets if isinstance(target, ast.Name)}
    tables = set()
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in {"insert", "update", "delete", "upsert"} and node.args):
            continue
        first = node.args[0]
        name = first.value if isinstance(first, ast.Constant) else constants.get(getattr(first, "id", ""))
        if isinstance(name, str) and name.isidentifier():  # a table name, not a route path
            tables.add(name)
    return tables


def test_one_writer_per_table():
    strays = []
    written: set[str] = set()
    for path in SRC.rglob("*.py"):
        module = module_name(path)
        if module == "forgeflow.store.db":
            continue  # the row access itself
        for table in writes_of(path):
            written.add(table)
            owners = WRITERS.get(table)
            if owners is None:
                strays.append(f"{module} writes {table!r}, which has no owner in WRITERS")
            elif module not in owners:
                strays.append(f"{module} writes {table!r}, owned by {', '.join(sorted(owners))}")
    assert not strays, "\n".join(strays)
    assert written == set(WRITERS), f"owners that write nothing (a stale WRITERS entry?): {set(WRITERS) - written}"


def test_modules_stay_under_500_lines():
    long = [f"{p.relative_to(SRC)}: {n}" for p in SRC.rglob("*.py") if (n := len(p.read_text().splitlines())) > 500]
    assert not long, "split these modules: " + ", ".join(long)
