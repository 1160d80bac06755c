"""The code's imports run one way, with the data (docs/contract.md §1-§2):

    contract ← project infrastructure ← collector ← metrics ← alerts ← notifications ← gateway ← project wiring

Function-level imports count too; migrations are left out (they name apps by string). A module may import
its own package and anything in a lower layer, never a higher one, and no package's modules import each
other in a circle.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WIRING = {"cryptomon.urls", "cryptomon.asgi", "cryptomon.websocket_routes", "cryptomon.health"}
LAYERS = [
    "cryptomon.contract",  # names, subjects, time helpers, message parsers: no app, no framework
    "cryptomon",  # infrastructure: settings, NATS mechanics, workers, embedded servers, Celery app
    "collector",
    "metrics",
    "alerts",
    "notifications",  # beside alerts: reads alerts, alerts never reads it (a signal tells it)
    "gateway",
    "wiring",  # URLs, ASGI application, health views: they may import every app
]
THIRD_PARTY_OF_THE_CONTRACT = {"msgspec"}


def layer_of(module: str) -> int | None:
    """The layer of one of our modules, or None for the standard library and third-party packages."""
    if module in WIRING or module.startswith("cryptomon.management."):  # entry points: they wire it all
        return LAYERS.index("wiring")
    if module == "cryptomon.contract" or module.startswith("cryptomon.contract."):
        return LAYERS.index("cryptomon.contract")
    top = module.split(".")[0]
    return LAYERS.index(top) if top in LAYERS else None


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> set[str]:
    """Every module the file imports, at any depth (`from a import b` counts as `a` and `a.b`)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


SOURCES = {
    module_name(path): path
    for package in ("cryptomon", "collector", "metrics", "alerts", "notifications", "gateway")
    for path in sorted((ROOT / package).rglob("*.py"))
    if "migrations" not in path.parts
}


def test_every_module_imports_only_its_own_layer_or_lower_ones():
    upward = []
    for module, path in SOURCES.items():
        own = layer_of(module)
        for name in sorted(imported(path)):
            target = layer_of(name)
            if target is not None and target > own:
                upward.append(f"{module} ({LAYERS[own]}) imports {name} ({LAYERS[target]})")
    assert upward == []


def test_the_contract_imports_only_the_standard_library_and_msgspec():
    for module, path in SOURCES.items():
        if layer_of(module) != 0:
            continue
        for name in imported(path):
            top = name.split(".")[0]
            assert (
                name.startswith("cryptomon.contract")
                or top in sys.stdlib_module_names
                or top in THIRD_PARTY_OF_THE_CONTRACT
            ), f"{module} imports {name}"


@pytest.mark.parametrize(
    "package", ["cryptomon", "collector", "metrics", "alerts", "notifications", "gateway"]
)
def test_the_modules_of_a_package_import_each_other_without_a_circle(package):
    own = {module for module in SOURCES if module.split(".")[0] == package}
    graph = {
        module: {name for name in imported(SOURCES[module]) if name in own and name != module}
        for module in own
    }
    done: set[str] = set()

    def visit(module: str, trail: tuple[str, ...]) -> None:
        assert module not in trail, "import circle: " + " → ".join((*trail, module))
        if module in done:
            return
        for target in sorted(graph[module]):
            visit(target, (*trail, module))
        done.add(module)

    for module in sorted(graph):
        visit(module, ())
