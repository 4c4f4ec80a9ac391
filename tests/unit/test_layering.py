"""The import direction of DESIGN.md: core imports nothing of ours and no web or queue framework;
schemas may use core; service and worker never import each other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {
    "core": {"fastapi", "starlette", "celery", "pydantic", "pydantic_settings", "schemas", "service", "worker"},
    "schemas": {"fastapi", "starlette", "celery", "service", "worker"},
    "service": {"worker"},
    "worker": {"service", "fastapi", "starlette"},
}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_import_direction(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files
    offenders = {str(path.relative_to(ROOT)): sorted(imported_packages(path) & FORBIDDEN[package])
                 for path in files if imported_packages(path) & FORBIDDEN[package]}
    assert offenders == {}
