"""The shape of the code (docs/architecture.md): imports point one way, with no cycle; the
sandbox package never imports the server or its libraries; no module grows past ~400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("sngin", "sandbox")
MAX_LINES = 400


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def runtime_imports(path: Path) -> set[str]:
    """Modules imported at import time (not the `if TYPE_CHECKING:` ones, not in functions)."""
    imported = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    return imported


def test_no_import_cycle():
    graph = {
        name: {m for m in runtime_imports(path) if m.split(".")[0] in PACKAGES}
        for name, path in modules().items()
    }
    done: set[str] = set()

    def visit(name: str, stack: list[str]) -> None:
        for imported in graph.get(name, ()):
            assert imported not in stack, " -> ".join([*stack, imported])
            if imported not in done:
                visit(imported, [*stack, imported])
        done.add(name)

    for name in graph:
        visit(name, [name])


def test_the_sandbox_never_imports_the_server_or_its_libraries():
    forbidden = ("sngin", "trio", "httpx", "quart", "quart_trio", "hypercorn")
    for name, path in modules().items():
        if name.startswith("sandbox"):
            roots = {m.split(".")[0] for m in runtime_imports(path)}
            assert not roots & set(forbidden), (name, roots & set(forbidden))


def test_modules_stay_small():
    files = [*modules().values(), *(ROOT / "sandbox" / "lua").rglob("*.lua")]
    too_long = {p.name: n for p in files if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not too_long
