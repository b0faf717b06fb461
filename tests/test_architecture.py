"""The shape of the package: small modules, no import cycles, the simulator named only where it is needed."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "greenrl"
MODULES = sorted(p for p in PACKAGE.rglob("*.py"))
MAX_LINES = 600
# Policies that need the simulator itself (hindsight over the true load), and the simulator.
SIMULATOR_USERS = ("sim/", "baselines/oracle.py", "baselines/static.py")


def _name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Modules of greenrl that ``path`` imports, at the top or inside functions (not under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    package = _name(path) if path.name == "__init__.py" else _name(path).rpartition(".")[0]
    typing_only = {
        id(n)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for n in ast.walk(block)
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("greenrl")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).strip(".")
            if base.startswith("greenrl"):
                subs = {f"{base}.{a.name}" for a in node.names}
                # `from pkg import submodule` needs the submodule; any other name needs pkg itself
                found |= subs if subs <= modules else subs | {base}
    return found


def test_no_module_is_over_600_lines() -> None:
    long = {str(p.relative_to(PACKAGE)): n for p in MODULES if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these along their seams: {long}"


def test_no_import_cycle() -> None:
    names = {_name(p): p for p in MODULES}
    graph = {name: {m for m in _imports(p, set(names)) if m in names and m != name} for name, p in names.items()}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt) :] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)


def test_only_the_simulator_users_ask_for_a_simnode() -> None:
    offenders = []
    for p in MODULES:
        rel = p.relative_to(PACKAGE).as_posix()
        if rel.startswith(SIMULATOR_USERS):
            continue
        for node in ast.walk(ast.parse(p.read_text())):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", "") == "isinstance"
                and "SimNode" in ast.unparse(node)
            ):
                offenders.append(f"{rel}:{node.lineno}")
    assert not offenders, f"use the Node protocol (or a declared simulator need) instead: {offenders}"
