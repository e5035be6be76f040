"""The package's architecture as a test: every import inside `ssd/` points down the layer order that the
README's "Architecture" section declares, and no module imports itself through others (no cycle).

Imports inside functions and under `TYPE_CHECKING` count too: a lazy upward import is still a
dependency in the wrong direction."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGE = REPO / "ssd"


def declared_layers() -> list[tuple[str, list[str]]]:
    """The README's layer list, lowest first: lines `N. **name**: `mod`, `mod`...` under "### Layers"."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("### Layers", 1)[1].split("\n#", 1)[0]
    layers = []
    for line in section.splitlines():
        m = re.match(r"\s*\d+\. \*\*(\w[\w ]*)\*\*: (.*)", line)
        if m:
            layers.append((m.group(1), re.findall(r"`(ssd[\w.]*)`", m.group(2))))
    return layers


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str) -> set[str]:
    """The `ssd` modules that module `name` imports (a `from pkg import sub` names the submodule)."""
    path = MODULES[name]
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "ssd")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "ssd":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in MODULES else target)
    found.discard(name)
    return {m for m in found if m in MODULES}


def layer_of(name: str, layers: list[tuple[str, list[str]]]) -> int:
    best, best_len = -1, -1
    for index, (_, prefixes) in enumerate(layers):
        for prefix in prefixes:
            covers = name == prefix or (prefix != "ssd" and name.startswith(prefix + "."))
            if covers and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    return best


def test_readme_declares_layers_that_cover_every_module() -> None:
    layers = declared_layers()
    assert len(layers) >= 5, "README: the 'Layers' list of the Architecture section is missing"
    unplaced = [m for m in MODULES if layer_of(m, layers) < 0]
    assert not unplaced, f"modules in no README layer: {unplaced}"


def test_no_import_points_up_the_layers() -> None:
    layers = declared_layers()
    upward = []
    for name in MODULES:
        mine = layer_of(name, layers)
        for target in sorted(imports_of(name)):
            theirs = layer_of(target, layers)
            if theirs > mine:
                upward.append(f"{name} ({layers[mine][0]}) imports {target} ({layers[theirs][0]})")
    assert not upward, "\n".join(upward)


def test_no_import_cycle() -> None:
    graph = {name: imports_of(name) for name in MODULES}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []
    cycles: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*stack[stack.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)
    assert not cycles, "\n".join(cycles)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from ssd.priors import generator\n", {"ssd.priors.generator"}),
        ("from ssd.priors.generator import generate_priors\n", {"ssd.priors.generator"}),
        ("import ssd.boxes\n", {"ssd.boxes"}),
        ("def f():\n    from ssd.config import Config\n", {"ssd.config"}),
    ],
)
def test_import_walker_resolves_forms(source: str, expected: set[str], tmp_path: Path, monkeypatch) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(source)
    monkeypatch.setitem(MODULES, "ssd.probe", probe)
    assert imports_of("ssd.probe") == expected
