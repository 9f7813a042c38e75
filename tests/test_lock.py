"""The lock (requirements/*.txt) holds what pyproject.toml asks for, and is what installs.

A dependency added to pyproject.toml without `make lock` fails here, with the
command to run, instead of as an ImportError in a fresh checkout's `make test`.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
LOCKS = {"runtime": ROOT / "requirements" / "runtime.txt", "dev": ROOT / "requirements" / "dev.txt"}
# The installer `make install` bootstraps with pip before uv installs the rest.
BOOTSTRAP = ROOT / "requirements" / "bootstrap.txt"
_PIN = re.compile(
    r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^ ;\\]+)(?: ; (?P<marker>[^\\]+))?"
)


def _pins(lock: Path) -> dict[str, list[tuple[Version, Marker | None]]]:
    """Each locked package's versions, with the markers that choose between them."""
    pins: dict[str, list[tuple[Version, Marker | None]]] = {}
    for line in lock.read_text().splitlines():
        match = _PIN.match(line)
        if match:
            marker = Marker(match["marker"].strip()) if match["marker"] else None
            pins.setdefault(canonicalize_name(match["name"]), []).append(
                (Version(match["version"]), marker)
            )
    return pins


def _project() -> dict[str, object]:
    project: dict[str, object] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project


def _wanted(lock: str) -> list[Requirement]:
    project = _project()
    wanted = [Requirement(line) for line in project["dependencies"]]  # type: ignore[attr-defined]
    if lock == "dev":
        extras = project["optional-dependencies"]
        wanted += [Requirement(line) for line in extras["dev"]]  # type: ignore[index]
    return wanted


@pytest.mark.parametrize("lock", LOCKS)
def test_the_lock_pins_every_dependency_within_its_bounds(lock: str) -> None:
    pins = _pins(LOCKS[lock])
    for requirement in _wanted(lock):
        versions = pins.get(canonicalize_name(requirement.name))
        assert versions, f"{requirement.name} is not in {LOCKS[lock].name}: run `make lock`"
        for version, _ in versions:
            assert requirement.specifier.contains(version, prereleases=True), (
                f"{LOCKS[lock].name} pins {requirement.name}=={version}, outside "
                f"{requirement.specifier}: run `make lock`"
            )


def test_every_pin_carries_hashes() -> None:
    for lock in [*LOCKS.values(), BOOTSTRAP]:
        blocks = re.split(r"\n(?=[A-Za-z0-9])", lock.read_text().split("\n", 2)[2])
        for block in blocks:
            assert "--hash=sha256:" in block, f"{lock.name}: {block.splitlines()[0]} has no hash"


def test_the_image_runs_the_versions_the_tests_ran() -> None:
    runtime, dev = _pins(LOCKS["runtime"]), _pins(LOCKS["dev"])
    assert runtime, "runtime.txt pins nothing"
    for name, versions in runtime.items():
        assert versions == dev.get(name), f"{name}: runtime.txt and dev.txt differ"


def test_make_and_the_dockerfile_install_from_the_lock() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "LOCK := requirements/dev.txt" in makefile
    assert "pip install --quiet --require-hashes -r requirements/bootstrap.txt" in makefile
    assert "$(UV_PIP) --require-hashes -r $(LOCK)" in makefile
    assert "$(UV_PIP) --no-deps --no-build-isolation -e ." in makefile
    assert "uv" in _pins(BOOTSTRAP)
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "pip install --require-hashes -r requirements/runtime.txt" in dockerfile
    assert "pip install --no-deps --no-build-isolation ." in dockerfile


def test_the_lock_holds_the_build_backend() -> None:
    """`--no-build-isolation` builds Depot with the setuptools the lock installed."""
    system = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]
    for requirement in map(Requirement, system["requires"]):
        for lock in LOCKS.values():
            versions = _pins(lock)[canonicalize_name(requirement.name)]
            assert all(requirement.specifier.contains(version) for version, _ in versions)


# Depot's own packages: what the image runs, so every module they import at its top
# must come from the runtime lock (a dev-only one imports fine in the test venv and
# fails only in the image).
PACKAGES = ("api", "core", "migrations", "schema", "storage", "workers")


def _top_level_imports(path: Path) -> set[str]:
    """The top-level module of every ``import`` at a module's top (not in a function)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_every_module_the_packages_import_is_in_the_runtime_lock() -> None:
    runtime = set(_pins(LOCKS["runtime"]))
    distributions = importlib.metadata.packages_distributions()
    missing: dict[str, str] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for name in _top_level_imports(path):
                if name in sys.stdlib_module_names or name in PACKAGES or name == "__future__":
                    continue
                found = {canonicalize_name(d) for d in distributions.get(name, [])}
                if not found & runtime:
                    missing[name] = str(path.relative_to(ROOT))
    assert not missing, (
        f"imported by Depot but not in requirements/runtime.txt (the image's): {missing}; "
        "add them to pyproject.toml's dependencies and run 'make lock'"
    )
