"""Imports point one way, as docs/architecture.md says: the rule, checked on the source."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# What each package may not import. `core` and `storage` know nothing of
# GraphQL or HTTP; a worker process never imports `api` or `schema`.
FORBIDDEN = {
    "core": {"api", "schema", "workers", "starlette", "strawberry", "uvicorn"},
    "storage": {"api", "schema", "workers", "starlette", "strawberry", "uvicorn"},
    "migrations": {"api", "schema", "workers"},
    "workers": {"api", "schema", "starlette", "strawberry"},
    "schema": {"api"},
}


def imported_packages(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports, at any depth of the code."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.partition(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_point_one_way(package: str) -> None:
    offences = {
        str(path.relative_to(ROOT)): sorted(imported_packages(path) & FORBIDDEN[package])
        for path in sorted((ROOT / package).rglob("*.py"))
    }
    assert {path: names for path, names in offences.items() if names} == {}


def test_the_checker_sees_imports_inside_functions(tmp_path: Path) -> None:
    module = tmp_path / "lazy.py"
    module.write_text("def f():\n    from api.app import create_app\n    import schema.query\n")
    assert imported_packages(module) == {"api", "schema"}
