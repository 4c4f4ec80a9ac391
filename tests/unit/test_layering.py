"""The import direction of DESIGN.md: core (the ML layer) reaches no web, queue or validation
framework; schemas reach no torch; service and worker never import each other; tests and bench
share helpers through `support` and never import each other."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {
    "core": {"fastapi", "starlette", "celery", "redis", "pydantic", "pydantic_settings", "prometheus_client",
             "infra", "schemas", "service", "worker"},
    "infra": {"fastapi", "starlette", "service", "worker"},
    "schemas": {"fastapi", "starlette", "celery", "redis", "torch", "onnxruntime", "infra", "service", "worker"},
    "service": {"worker"},
    "worker": {"service", "fastapi", "starlette"},
    "tests": {"bench"},
    "bench": {"tests"},
    "gazer": {"torch", "onnxruntime", "core", "infra", "service", "worker", "fastapi", "starlette", "celery", "redis"},
}
# What importing every module of a package may not load, directly or through anything it imports.
UNREACHABLE = {
    "core": ["fastapi", "starlette", "celery", "redis", "pydantic", "pydantic_settings", "prometheus_client"],
    "schemas": ["torch", "onnxruntime"],
    "gazer": ["torch", "onnxruntime", "fastapi"],
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


def modules(package: str) -> list[str]:
    return sorted(".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
                  for path in (ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_package_imports_what_its_layer_forbids(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files
    offenders = {str(path.relative_to(ROOT)): sorted(imported_packages(path) & FORBIDDEN[package])
                 for path in files if imported_packages(path) & FORBIDDEN[package]}
    assert offenders == {}


@pytest.mark.parametrize("package", sorted(UNREACHABLE))
def test_nothing_forbidden_is_reachable_through_other_imports(package):
    program = ("import importlib, json, sys\n"
               f"for name in {modules(package)!r}: importlib.import_module(name)\n"
               f"print(json.dumps(sorted(m for m in {UNREACHABLE[package]!r} if m in sys.modules)))")
    loaded = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, check=True)
    assert json.loads(loaded.stdout) == []

