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


# The layers of sngin (docs/architecture.md), lowest first: a module may import from its own
# package and from lower layers, never from a higher one; this holds for every import, those in
# functions and under `if TYPE_CHECKING:` too. A top-level module is a unit of its own.
LAYERS: list[set[str]] = [
    {"sngin", "errors", "limits", "config_values", "names", "backoff"},
    {"machine_defaults", "config"},
    {"bodies"},
    {"observe"},
    {"storage"},
    {"code"},
    {"tenants"},
    {"calls"},
    {"workers"},
    {"node"},
    {"replay"},
    {"edge"},
    {"cron"},
    {"admin"},
    {"server"},
    {"client"},
    {"cli", "__main__"},
]
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}
MAX_TOP_LEVEL = 12


def unit_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def all_imports(name: str, path: Path) -> set[str]:
    """Every sngin module this one imports, wherever the import stands."""
    known = modules()
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sngin"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names
                         if f"{node.module}.{a.name}" in known)  # fmt: skip
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("sngin"))
    return {m for m in found if m in known} - {name}


def sngin_modules() -> dict[str, Path]:
    return {name: path for name, path in modules().items() if name.split(".")[0] == "sngin"}


def test_every_unit_of_sngin_has_a_layer():
    units = {unit_of(name) for name in sngin_modules()}
    assert units <= set(RANK), units - set(RANK)


def test_no_module_imports_from_a_higher_layer():
    upward = []
    for name, path in sngin_modules().items():
        rank = RANK[unit_of(name)]
        for imported in all_imports(name, path):
            if RANK[unit_of(imported)] > rank:
                upward.append(f"{name} -> {imported}")
    assert not upward, upward


def test_the_tenants_edge_reaches_neither_the_admin_package_nor_quart():
    """The module defining Dispatcher is handed the admin app by server.py: nothing it imports,
    however indirectly (type-only imports included), is admin code or Quart."""
    known = sngin_modules()
    seen, todo, libraries = set(), ["sngin.edge.dispatcher"], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        tree = ast.parse(known[name].read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                libraries.add(node.module.split(".")[0])
            elif isinstance(node, ast.Import):
                libraries.update(a.name.split(".")[0] for a in node.names)
        todo.extend(all_imports(name, known[name]))
    assert "class Dispatcher" in known["sngin.edge.dispatcher"].read_text()
    assert not {name for name in seen if unit_of(name) == "admin"}
    assert not libraries & {"quart", "quart_trio"}


def test_few_modules_at_the_top_and_no_package_of_one():
    top = [p for p in (ROOT / "sngin").glob("*.py")]
    assert len(top) <= MAX_TOP_LEVEL, sorted(p.name for p in top)
    for package in (ROOT / "sngin").iterdir():
        if (package / "__init__.py").exists():
            inside = [p for p in package.glob("*.py") if p.name != "__init__.py"]
            assert len(inside) >= 2, package.name


# Exceptions that are no error of sngin's own: control flow inside one module, or a library's
# error type extended so the library handles it as its own.
NOT_SNGIN_ERRORS = {
    "sngin.edge.connection_guard.SendTimedOut",  # ends one slow write, caught beside it
    "sngin.code.s3_store.TransientError",  # tells tenacity to retry, caught beside it
    "sngin.code.files.Conflict",  # carries the current version to the route that answers 412
    "sngin.admin.s3_events.EventError",  # a ValueError: a malformed notification
    "sngin.calls.outbound.EgressRefused",  # an httpcore.ConnectError, so httpx reports it
    "sngin.bodies.http_body.BodyDecodeError",  # an httpx.DecodingError, for the same reason
}


def test_every_error_sngin_raises_is_in_the_one_tree():
    """sngin.errors: SnginError, by HTTP status and by domain (workers, storage, calls)."""
    import importlib
    import inspect

    from sngin.errors import SnginError

    outside = set()
    for name in sngin_modules():
        if name.endswith("__main__"):
            continue
        module = importlib.import_module(name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ != name or not issubclass(cls, BaseException):
                continue
            qualified = f"{name}.{cls.__name__}"
            if not issubclass(cls, SnginError) and qualified not in NOT_SNGIN_ERRORS:
                outside.add(qualified)
    assert not outside, sorted(outside)
