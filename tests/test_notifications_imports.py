"""Notifications sit beside alerts: they import alerts, alerts never imports them, and the app's own
modules import each other one way (function-level imports count too)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def modules_of(package: str) -> dict[str, Path]:
    return {
        ".".join(path.relative_to(ROOT).with_suffix("").parts): path
        for path in (ROOT / package).rglob("*.py")
        if "migrations" not in path.parts
    }


def test_alerts_never_imports_notifications():
    offenders = {
        module: sorted(name for name in imported_modules(path) if name.split(".")[0] == "notifications")
        for module, path in modules_of("alerts").items()
    }
    assert {module: names for module, names in offenders.items() if names} == {}


def test_the_notifications_modules_import_each_other_without_a_cycle():
    modules = modules_of("notifications")
    graph = {
        module: {name for name in imported_modules(path) if name in modules and name != module}
        for module, path in modules.items()
    }
    done: set[str] = set()

    def visit(module: str, trail: tuple[str, ...]) -> None:
        assert module not in trail, "import cycle: " + " → ".join((*trail, module))
        if module in done:
            return
        for target in sorted(graph[module]):
            visit(target, (*trail, module))
        done.add(module)

    for module in sorted(graph):
        visit(module, ())
