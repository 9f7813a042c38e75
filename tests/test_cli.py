"""The ``depot`` command, driven the way an operator drives it.

Most tests call the click group in-process with :class:`click.testing.CliRunner`;
one runs the installed console script. The CLI calls ``asyncio.run`` itself, so
tests that need an async fixture (a PostgreSQL database) run it in a worker
thread, away from the test's event loop.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner, Result

from api.cli import main
from core import migrate
from tests.support import STRONG_SECRET, require_service

ROOT = Path(__file__).resolve().parent.parent
CLOSED_PORT_POSTGRES = "postgresql://depot:pg-s3cret@127.0.0.1:1/depot"
CLOSED_PORT_REDIS = "redis://:redis-s3cret@127.0.0.1:1/0"
PRODUCTION = {"DEPOT_ENVIRONMENT": "production", "DEPOT_SECRET_KEY": STRONG_SECRET}


def depot(*args: str, env: Mapping[str, str] | None = None) -> Result:
    """Run ``depot ARGS`` in-process, with extra environment variables."""
    return CliRunner().invoke(main, args, env=dict(env or {}), catch_exceptions=False)


async def depot_in_thread(*args: str, env: Mapping[str, str]) -> Result:
    return await anyio.to_thread.run_sync(lambda: depot(*args, env=env))


def _lines(text: str) -> list[str]:
    return text.strip().splitlines()


# -- help ---------------------------------------------------------------------


def test_installed_script_lists_its_commands() -> None:
    script = shutil.which("depot", path=str(Path(sys.executable).parent))
    assert script is not None, "the depot console script is not installed in this environment"
    completed = subprocess.run(
        [script, "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert completed.returncode == 0, completed.stderr
    for command in ("serve", "migrate", "check", "export-schema"):
        assert f"  {command} " in completed.stdout


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (["serve"], ["--host", "--port", "--reload", "--log-level"]),
        (["migrate"], ["upgrade", "downgrade", "current", "history"]),
    ],
)
def test_subcommand_help(command: list[str], expected: list[str]) -> None:
    result = depot(*command, "--help")
    assert result.exit_code == 0
    for word in expected:
        assert f"  {word} " in result.stdout


# -- export-schema ------------------------------------------------------------


def test_export_schema_prints_the_checked_in_sdl() -> None:
    result = depot("export-schema")
    assert result.exit_code == 0
    assert result.stdout == (ROOT / "schema.graphql").read_text(encoding="utf-8")


def test_export_schema_writes_a_file(tmp_path: Path) -> None:
    output = tmp_path / "out" / "schema.graphql"
    output.parent.mkdir()
    result = depot("export-schema", "--output", str(output))
    assert result.exit_code == 0
    assert result.stdout == ""
    assert output.read_text(encoding="utf-8") == (ROOT / "schema.graphql").read_text(
        encoding="utf-8"
    )


# -- check ----------------------------------------------------------------------


def test_check_passes_on_a_fresh_sqlite_configuration() -> None:
    result = depot("check")
    assert result.exit_code == 0, result.output
    lines = _lines(result.stdout)
    assert lines[0] == "✓ database reachable (sqlite)"
    assert lines[1].startswith("• ")
    assert "`depot serve` applies it at start" in lines[1]
    assert lines[2] == "✓ storage usable (file)"
    assert lines[-1] == "✓ configuration is valid and every service answers"
    assert result.stderr == ""


@pytest.mark.redis
def test_check_reaches_redis() -> None:
    redis_url = require_service("DEPOT_TEST_REDIS_URL", "Redis")
    result = depot("check", env={"DEPOT_REDIS_URL": redis_url})
    assert result.exit_code == 0, result.output
    assert "✓ redis reachable" in _lines(result.stdout)


@pytest.mark.parametrize(
    ("variable", "url", "service"),
    [
        ("DEPOT_DATABASE_URL", CLOSED_PORT_POSTGRES, "database"),
        ("DEPOT_REDIS_URL", CLOSED_PORT_REDIS, "redis"),
    ],
    ids=["database", "redis"],
)
def test_check_fails_when_a_service_is_unreachable(variable: str, url: str, service: str) -> None:
    result = depot("check", env={variable: url})
    assert result.exit_code == 1
    [problem] = [line for line in _lines(result.stderr) if line.startswith("✗ ")]
    assert problem.startswith(f"✗ {service} unreachable at ")
    assert "127.0.0.1:1" in problem
    assert "Connect call failed" in problem


@pytest.mark.parametrize(
    ("variable", "url", "password"),
    [
        ("DEPOT_DATABASE_URL", CLOSED_PORT_POSTGRES, "pg-s3cret"),
        ("DEPOT_REDIS_URL", CLOSED_PORT_REDIS, "redis-s3cret"),
    ],
    ids=["database", "redis"],
)
def test_check_does_not_print_passwords(variable: str, url: str, password: str) -> None:
    result = depot("check", env={variable: url})
    assert result.exit_code == 1
    assert password not in result.output


def test_check_fails_when_storage_is_unusable(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the storage directory should be")
    result = depot("check", env={"DEPOT_STORAGE_URL": (blocker / "storage").as_uri()})
    assert result.exit_code == 1
    [problem] = [line for line in _lines(result.stderr) if line.startswith("✗ ")]
    assert problem.startswith("✗ storage unusable: StorageError: cannot write to ")


def test_check_reads_the_trusted_documents_manifest(tmp_path: Path) -> None:
    manifest = tmp_path / "persisted-documents.json"
    manifest.write_text('{"a": "query A { __typename }", "b": "query B { me { id } }"}')
    result = depot("check", env={"DEPOT_TRUSTED_DOCUMENTS": str(manifest)})
    assert result.exit_code == 0, result.output
    assert f"✓ 2 trusted documents in {manifest}" in _lines(result.stdout)


@pytest.mark.parametrize("command", ["check", "serve"])
def test_a_broken_manifest_is_one_line(tmp_path: Path, command: str) -> None:
    manifest = tmp_path / "persisted-documents.json"
    manifest.write_text('{"a": "query A {"}')
    result = depot(command, env={"DEPOT_TRUSTED_DOCUMENTS": str(manifest)})
    assert result.exit_code == 1
    [problem] = [line for line in _lines(result.stderr) if str(manifest) in line]
    assert "document 'a' does not parse" in problem


def test_check_refuses_an_invalid_setting() -> None:
    result = depot("check", env={"DEPOT_LOG_LEVEL": "LOUD"})
    assert result.exit_code == 2
    assert _lines(result.stderr)[0] == "Depot's configuration is invalid:"
    assert _lines(result.stderr)[1].startswith("  DEPOT_LOG_LEVEL: ")
    assert result.stdout == ""


def test_check_in_production_needs_a_migrated_database() -> None:
    result = depot("check", env=PRODUCTION)
    assert result.exit_code == 1
    [problem] = [line for line in _lines(result.stderr) if line.startswith("✗ ")]
    assert "run `depot migrate upgrade`" in problem

    assert depot("migrate", "upgrade", env=PRODUCTION).exit_code == 0
    result = depot("check", env=PRODUCTION)
    assert result.exit_code == 0, result.output
    assert "✓ database schema is at the latest migration" in _lines(result.stdout)


# -- migrate --------------------------------------------------------------------


def test_migrate_history_lists_every_revision() -> None:
    result = depot("migrate", "history")
    assert result.exit_code == 0
    assert _lines(result.stdout)[-1] == "0001 <- base: Create the user table."
    assert _lines(result.stdout)[0].startswith(f"{migrate.head_revision()} <- ")


@pytest.mark.anyio
@pytest.mark.empty_database
async def test_migrate_round_trip(database_url: str) -> None:
    env = {"DEPOT_DATABASE_URL": database_url}
    head = migrate.head_revision()

    async def step(*args: str) -> str:
        result = await depot_in_thread("migrate", *args, env=env)
        assert result.exit_code == 0, result.output
        return result.stdout.strip()

    assert await step("current") == f"base (empty) (behind; latest is {head})"
    assert await step("upgrade") == "Database upgraded to head."
    assert await step("current") == f"{head} (latest)"
    assert await step("downgrade", "base") == "Database downgraded to base."
    assert (await step("current")).startswith("base (empty) ")
    assert await step("upgrade", "0001") == "Database upgraded to 0001."
    assert (await step("current")).startswith("0001 ")
