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


# Modules a package may not reach, directly or through anything it imports.
# Storage is handed its URL and links (``open_storage(url, links=…)``), never
# the whole configuration, so it can be opened and tested with no Settings.
UNREACHABLE = {
    "storage": {"core.settings"},
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


def imported_modules(path: Path) -> set[str]:
    """Dotted names ``path`` imports; ``from a import b`` names ``a`` and ``a.b``."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _source(module: str) -> Path | None:
    """The file of one of Depot's own modules, or None for anything else."""
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def reached_modules(path: Path) -> set[str]:
    """Every module of Depot's that importing ``path`` loads, packages' ``__init__`` included."""
    reached: set[str] = set()
    pending = [path]
    while pending:
        for name in imported_modules(pending.pop()):
            parts = name.split(".")
            for depth in range(1, len(parts) + 1):
                module = ".".join(parts[:depth])
                source = _source(module)
                if source is not None and module not in reached:
                    reached.add(module)
                    pending.append(source)
    return reached


@pytest.mark.parametrize("package", sorted(UNREACHABLE))
def test_modules_out_of_reach_stay_so(package: str) -> None:
    offences = {
        str(path.relative_to(ROOT)): sorted(reached_modules(path) & UNREACHABLE[package])
        for path in sorted((ROOT / package).rglob("*.py"))
    }
    assert {path: names for path, names in offences.items() if names} == {}


def test_the_checker_follows_imports_through_other_modules(tmp_path: Path) -> None:
    # core.uploads imports core.settings, so whatever imports core.uploads reaches it.
    assert "core.settings" in reached_modules(ROOT / "core" / "uploads.py")
    module = tmp_path / "via.py"
    module.write_text("from core import uploads\n")
    assert {"core", "core.uploads", "core.settings"} <= reached_modules(module)


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
