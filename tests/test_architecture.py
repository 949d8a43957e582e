"""The import direction of docs/architecture.md, read from the code with ast.

Every import counts, including those inside functions and under ``TYPE_CHECKING``: a lazy
import that points up is still a dependency that points up. What ``--help`` loads at run time
is tested in test_startup.py.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "mritumor"

# Bottom to top: a package may import its own modules and those of the packages before it.
LAYERS = (
    "core",
    "config",
    "data",
    "volumes",
    "stats",
    "plots",
    "models",
    "run",
    "predict",
    "export",
    "serve",
    "evaluation",
    "report",
    "engine",
    "cli",
)

# Modules of cli/ that the command modules share, and the helpers of one command group
# (infer_output: infer's formats; data_volumes: the volume side of data); every other cli
# module (but main.py, which assembles the app) is one command group, and imports no other.
CLI_SHARED = {"state", "ui", "options", "completion", "runs", "infer_output", "data_volumes"}

# Modules outside the layers: the package face, ``python -m mritumor`` and the 0.1 alias.
OUTSIDE_LAYERS = {"mritumor", "mritumor.__main__", "mritumor.registry"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported_names(path: Path, name: str) -> Iterator[str]:
    """The mritumor modules that a file imports, relative imports resolved."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def import_graph() -> dict[str, set[str]]:
    """Module -> the mritumor modules it imports (a ``from pkg import module`` names the module)."""
    modules = all_modules()
    return {
        name: {
            target
            for target in imported_names(path, name)
            if target in modules and target != name and target != "mritumor"
        }
        for name, path in modules.items()
    }


def layer(module: str) -> str:
    return module.split(".")[1]


def layered(module: str) -> bool:
    return module not in OUTSIDE_LAYERS


def test_every_module_belongs_to_a_layer() -> None:
    strays = [name for name in all_modules() if layered(name) and layer(name) not in LAYERS]
    assert strays == [], f"place these modules in a package of LAYERS: {strays}"


def test_imports_point_down_the_layers() -> None:
    upward = [
        f"{source} -> {target}"
        for source, targets in import_graph().items()
        if layered(source)
        for target in targets
        if layered(target) and LAYERS.index(layer(target)) > LAYERS.index(layer(source))
    ]
    assert upward == [], "imports that point up the layers:\n" + "\n".join(sorted(upward))


def test_no_command_module_imports_another() -> None:
    def is_command(module: str) -> bool:
        return module.startswith("mritumor.cli.") and module.rsplit(".", 1)[1] not in {
            *CLI_SHARED,
            "main",
        }

    sideways = [
        f"{source} -> {target}"
        for source, targets in import_graph().items()
        if is_command(source)
        for target in targets
        if is_command(target)
    ]
    assert sideways == [], "command modules that import another:\n" + "\n".join(sorted(sideways))


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the groups of modules that import each other in a loop."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in graph:
        if node not in index:
            visit(node)
    return groups


def test_no_import_loops() -> None:
    assert strongly_connected(import_graph()) == []


def test_the_loop_finder_finds_a_loop() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert strongly_connected(graph) == [["a", "b", "c"]]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from mritumor.run import bundle as bundles", {"mritumor.run", "mritumor.run.bundle"}),
        ("from . import ui", {"mritumor.cli", "mritumor.cli.ui"}),
        ("from ..core.errors import UsageError", {"mritumor.core.errors"}),
    ],
)
def test_imports_are_read_as_module_names(tmp_path: Path, source: str, expected: set[str]) -> None:
    path = tmp_path / "mod.py"
    path.write_text(source + "\n", encoding="utf-8")
    names = set(imported_names(path, "mritumor.cli.mod"))
    assert expected <= names


# A module longer than this mixes parts with different reasons to change; plots.py is one
# function per figure, which reads best whole.
MAX_MODULE_LINES = 500
LONG_BY_DESIGN = {"mritumor.plots"}


def test_no_module_is_long() -> None:
    long_modules = {
        name: lines
        for name, path in all_modules().items()
        if name not in LONG_BY_DESIGN
        and (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert long_modules == {}, f"split these modules (lines): {long_modules}"
