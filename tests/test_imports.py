"""The package's modules import one another without a circle: at run time anywhere (lazy
imports included), and in the server and the protocol not even for type checking (no
circle hidden behind ``TYPE_CHECKING``). A server's transports never import the server."""

from __future__ import annotations

import ast
from pathlib import Path

import kilndb

SOURCE = Path(kilndb.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(tree: ast.Module) -> set[int]:
    """The ids of the import nodes under ``if TYPE_CHECKING:``."""
    hidden: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in (
            "TYPE_CHECKING",
            "typing.TYPE_CHECKING",
        ):
            hidden.update(id(inner) for inner in ast.walk(node))
    return hidden


def imports_of(path: Path, modules: set[str], typing_too: bool) -> set[str]:
    """The kilndb modules ``path`` imports anywhere in it (with ``typing_too``, also
    those imported only for type checking)."""
    found: set[str] = set()
    tree = ast.parse(path.read_text())
    hidden = set() if typing_too else _type_checking_only(tree)
    package = (
        module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(".", 1)[0]
    )
    for node in ast.walk(tree):
        if id(node) in hidden:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(name for name in names if name in modules)
    return found


#: Packages without a circle even through imports made only for type checking.
STRICT = ("kilndb.server", "kilndb.protocol")


def graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in SOURCE.rglob("*.py")}
    modules = set(paths)
    edges = {
        name: imports_of(path, modules, name.startswith(STRICT)) - {name}
        for name, path in paths.items()
    }
    # Importing a submodule runs its package's __init__ first; that is not a circle.
    return {
        name: {t for t in targets if not name.startswith(t + ".")}
        for name, targets in edges.items()
    }


def test_no_module_imports_itself_through_others() -> None:
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    circles: list[list[str]] = []

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(edges[name]):
            if state.get(target) == 1:
                circles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[name] = 2

    for name in sorted(edges):
        if name not in state:
            visit(name, [name])
    assert not circles, circles


def test_transports_receive_services_not_the_server() -> None:
    edges = graph()
    for transport in (
        "kilndb.server.connections",
        "kilndb.server.socket_streams",
        "kilndb.server.http",
        "kilndb.server.websocket",
        "kilndb.server.cluster",
        "kilndb.server.session",
    ):
        assert "kilndb.server.lifecycle" not in edges[transport], transport
        assert "kilndb.server" not in edges[transport], transport
