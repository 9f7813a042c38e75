"""Imports point one way, as docs/architecture.md says: the rule, checked on the source."""

from __future__ import annotations

import ast
import subprocess
import sys
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
# Storage is handed its URL (``open_storage(url)``), never the whole
# configuration, so it can be opened and tested with no Settings.
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


# -- no import cycles --------------------------------------------------------------


def project_modules(root: Path) -> dict[str, Path]:
    """Every module of the packages under ``root``, by dotted name (a package by its own)."""
    modules: dict[str, Path] = {}
    for init in sorted(root.glob("*/__init__.py")):
        for path in sorted(init.parent.rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    return modules


def import_graph(root: Path) -> dict[str, set[str]]:
    """Which project modules each project module imports, anywhere in its code.

    Imports inside functions and under ``TYPE_CHECKING`` count too: they hide a
    cycle rather than remove it. ``from a import b`` is an edge to ``a.b`` when
    that is a module, else to ``a``; the package ``a`` a module lives in is not
    an edge of its own (Python sets a package up before running its
    ``__init__``, so a package importing its submodules is no cycle).
    """
    modules = project_modules(root)

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str | None] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets.update(known(alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets.update(known(f"{base}.{alias.name}") for alias in node.names)
        graph[name] = {target for target in targets if target is not None and target != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in sorted(graph[module]):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            group = [stack.pop()]
            while group[-1] != module:
                group.append(stack.pop())
            if len(group) > 1:
                found.append(sorted(group))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return sorted(found)


def test_no_module_imports_itself_through_others() -> None:
    graph = import_graph(ROOT)
    assert {"schema.nodes", "core.models", "tests.support"} <= graph.keys()
    assert cycles(graph) == []


def test_the_cycle_checker_sees_cycles_however_hidden(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("from pkg import a\n")
    (package / "a.py").write_text("from pkg.b import thing\n")
    (package / "b.py").write_text("def thing():\n    from . import c\n")
    (package / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.a.x\n"
    )
    (package / "d.py").write_text("import pkg.a\n")
    graph = import_graph(tmp_path)
    assert graph == {
        "pkg": {"pkg.a"},
        "pkg.a": {"pkg.b"},
        "pkg.b": {"pkg.c"},
        "pkg.c": {"pkg.a"},
        "pkg.d": {"pkg.a"},
    }
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.c"]]


def test_the_worker_commands_load_no_graphql_and_no_http_server() -> None:
    """``depot worker`` and ``depot scheduler`` start without strawberry, graphql-core,
    Starlette or uvicorn: a fifth of the modules ``depot serve`` loads, paid again
    at every worker start (the rule above, for what a process actually imports)."""
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, api.cli, workers.lifecycle, workers.broker, workers.scheduler\n"
            "print(' '.join(sorted({name.partition('.')[0] for name in sys.modules})))",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert {"api", "workers"} <= set(loaded)
    assert sorted({"strawberry", "graphql", "starlette", "uvicorn", "schema"} & set(loaded)) == []


# Packages the development tools install (pip-audit: rich; pytest: Pygments; Locust:
# gevent and psutil) that Depot's libraries import when they find them.
DEVELOPMENT_ONLY = ("rich", "pygments", "gevent", "psutil")


def test_depots_processes_leave_out_what_only_the_development_tools_install() -> None:
    """``depot serve``, ``worker`` and ``scheduler`` import none of :data:`DEVELOPMENT_ONLY`,
    installed here though they are (api/__init__.py): a process of the suite loads what
    one of the image loads, 168 modules fewer than it did (~0.25 s of CPU per start)."""
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import importlib.util, sys\n"
            "names = sys.argv[1:]\n"
            "assert all(importlib.util.find_spec(name) for name in names), 'not installed'\n"
            "import api.cli, api.app, workers.lifecycle, workers.broker, workers.scheduler\n"
            "from core.logging import configure_logging\n"
            "configure_logging('INFO', json=False)\n"
            "print(' '.join(name for name in names if sys.modules.get(name) is not None))",
            *DEVELOPMENT_ONLY,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert loaded == []
