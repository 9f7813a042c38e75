"""The README and docs/ stay true to the code: settings table, make targets, variables.

``make docs`` runs this module to rewrite the README's configuration table:

    .venv/bin/python -m tests.test_docs
"""

from __future__ import annotations

import re
from pathlib import Path

import click

from api.cli import main
from core.settings import ENV_PREFIX, Settings, settings_table

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
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


if __name__ == "__main__":
    current = README.read_text(encoding="utf-8")
    rendered = render_readme(current)
    if rendered != current:
        README.write_text(rendered, encoding="utf-8")
        print("README.md: configuration table regenerated")
    else:
        print("README.md: configuration table is current")
