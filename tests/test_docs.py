"""The README and docs/ stay true to the code: settings table, make targets, variables.

``make docs`` runs this module to rewrite the README's configuration table:

    .venv/bin/python -m tests.test_docs
"""

from __future__ import annotations

import importlib
import re
import unicodedata
from pathlib import Path

import click

from api.cli import main
from core.settings import ENV_PREFIX, Settings, env_example, settings_table

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
ENV_EXAMPLE = ROOT / ".env.example"
TABLE_START = "<!-- settings-table:start -->"
TABLE_END = "<!-- settings-table:end -->"

# Read by the test suite and scripts/test-services.sh, not by Depot itself.
TEST_VARIABLES = {
    "DEPOT_TEST_POSTGRES_URL",
    "DEPOT_TEST_REDIS_URL",
    "DEPOT_SERVICES_DIR",
    "DEPOT_TEST_PG_PORT",
    "DEPOT_TEST_REDIS_PORT",
}

_CODE = re.compile(r"```.*?```|`[^`\n]+`", re.DOTALL)
_MAKE_COMMAND = re.compile(r"\bmake((?:[ \t]+-[\w-]+)*(?:[ \t]+[a-z][\w-]*)+)")
_MAKE_TARGET = re.compile(r"^([A-Za-z][\w-]*)\s*:(?!=)", re.MULTILINE)
_VARIABLE = re.compile(r"\bDEPOT_[A-Z0-9_]+")
# Our packages, as docs name their modules: ``core/jobs.py`` or ``core.jobs.claim``.
PACKAGES = ("api", "bench", "core", "migrations", "schema", "storage", "tests", "workers")
_DOTTED = re.compile(rf"^(?:{'|'.join(PACKAGES)})(?:\.[A-Za-z_]\w*)+$")
_PATH = re.compile(rf"^(?:{'|'.join(PACKAGES)}|docs|scripts|\.ci)/[\w./-]*$")
_LINK = re.compile(r"\]\(([^)\s]*)\)")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*$", re.MULTILINE)


def render_readme(text: str) -> str:
    """``text`` with the configuration table between the markers regenerated."""
    before, start, rest = text.partition(TABLE_START)
    _, end, after = rest.partition(TABLE_END)
    if not (start and end):
        raise ValueError(f"README.md needs a {TABLE_START} line followed by a {TABLE_END} line")
    return f"{before}{TABLE_START}\n\n{settings_table()}\n{TABLE_END}{after}"


def _documents() -> list[Path]:
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def test_readme_settings_table_is_current() -> None:
    text = README.read_text(encoding="utf-8")
    assert render_readme(text) == text, (
        "README.md's configuration table differs from core.settings; run `make docs`"
    )


def test_env_example_is_current() -> None:
    assert ENV_EXAMPLE.read_text(encoding="utf-8") == env_example(), (
        ".env.example differs from core.settings; run `make docs`"
    )


def test_make_targets_named_in_readme_exist() -> None:
    code = " ".join(_CODE.findall(README.read_text(encoding="utf-8")))
    named = {
        word
        for command in _MAKE_COMMAND.findall(code)
        for word in command.split()
        if not word.startswith("-")
    }
    targets = set(_MAKE_TARGET.findall((ROOT / "Makefile").read_text(encoding="utf-8")))
    assert named, "README.md names no make targets"
    assert named <= targets, f"README.md names make targets the Makefile lacks: {named - targets}"


def _cli_variables(command: click.Command) -> set[str]:
    """Environment variables that options of the ``depot`` commands read."""
    names = {
        name
        for param in command.params
        for name in ([param.envvar] if isinstance(param.envvar, str) else param.envvar or [])
    }
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            names |= _cli_variables(sub)
    return names


def test_documented_variables_are_real_settings() -> None:
    settings = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}
    known = settings | TEST_VARIABLES | _cli_variables(main)
    for document in _documents():
        mentioned = set(_VARIABLE.findall(document.read_text(encoding="utf-8")))
        unknown = mentioned - known
        assert not unknown, f"{document.relative_to(ROOT)} mentions unknown variables {unknown}"


def _code_spans(text: str) -> list[str]:
    return [
        span.strip("`")
        for span in re.findall(r"`[^`\n]+`", re.sub(r"```.*?```", "", text, flags=re.DOTALL))
    ]


def resolves(name: str) -> bool:
    """Whether ``pkg.module.Attr.attr`` names a module and, after it, attributes."""
    parts = name.split(".")
    for split in range(len(parts), 0, -1):
        try:
            target: object = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attribute in parts[split:]:
            if not hasattr(target, attribute):
                return False
            target = getattr(target, attribute)
        return True
    return False


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as dashes."""
    text = re.sub(r"[`*_]", "", heading).strip().lower()
    text = "".join(c for c in text if c in "- " or unicodedata.category(c)[0] in "LN")
    return text.replace(" ", "-")


def _anchors(document: Path) -> set[str]:
    return {anchor(h) for h in _HEADING.findall(document.read_text(encoding="utf-8"))}


def _named_thing_exists(span: str) -> bool:
    """A code span naming a path or a dotted module name: does it exist? Other spans do."""
    if _PATH.match(span):
        return (ROOT / span.rstrip("/")).exists()
    if _DOTTED.match(span):
        return (ROOT / span).exists() or resolves(span)
    return True


def _link_reaches(document: Path, target: str) -> bool:
    if "://" in target or target.startswith("mailto:"):
        return True
    path, _, fragment = target.partition("#")
    linked = (document.parent / path) if path else document
    if not linked.exists():
        return False
    return not fragment or linked.suffix != ".md" or fragment in _anchors(linked)


def test_modules_classes_and_paths_named_in_docs_exist() -> None:
    missing = [
        f"{document.name}: {span}"
        for document in _documents()
        for span in _code_spans(document.read_text(encoding="utf-8"))
        if not _named_thing_exists(span)
    ]
    assert missing == [], f"docs name modules, classes or files that do not exist: {missing}"


def test_modules_in_the_package_table_exist() -> None:
    """architecture.md's "Packages" table names each package's modules by file name."""
    rows = re.findall(
        r"^\| `(\w+)/` \|(.*)\|$", (ROOT / "docs" / "architecture.md").read_text(), re.M
    )
    assert rows, "docs/architecture.md has no package table"
    missing = [
        f"{package}/{module}"
        for package, text in rows
        for module in re.findall(r"`(\w+\.py)`", text)
        if not (ROOT / package / module).exists()
    ]
    assert missing == [], f"docs/architecture.md's package table names missing modules: {missing}"


def test_links_between_docs_reach_their_anchors() -> None:
    broken = [
        f"{document.name}: {target}"
        for document in _documents()
        for target in _LINK.findall(document.read_text(encoding="utf-8"))
        if not _link_reaches(document, target)
    ]
    assert broken == [], f"docs link to files or sections that do not exist: {broken}"


def test_the_doc_checks_see_a_missing_name() -> None:
    assert resolves("core.jobs.claim")
    assert not resolves("core.jobs.no_such_function")
    assert not resolves("core.no_such_module")
    assert anchor("Global ids and `node(id:)`") == "global-ids-and-nodeid"


if __name__ == "__main__":
    if not ENV_EXAMPLE.exists() or ENV_EXAMPLE.read_text(encoding="utf-8") != env_example():
        ENV_EXAMPLE.write_text(env_example(), encoding="utf-8")
        print(".env.example: regenerated")
    current = README.read_text(encoding="utf-8")
    rendered = render_readme(current)
    if rendered != current:
        README.write_text(rendered, encoding="utf-8")
        print("README.md: configuration table regenerated")
    else:
        print("README.md: configuration table is current")
