"""The Dockerfile and compose.yaml run real ``depot`` commands with real settings.

No Docker engine is needed: the files are parsed, and each command line is
handed to the click group that ``depot`` runs, so a renamed subcommand, option
or setting breaks these tests instead of a deployment.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import os
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import pytest
import yaml
from click.testing import CliRunner

from api.cli import main
from core.settings import ENV_PREFIX, Settings
from storage.s3 import parse_s3_url

ROOT = Path(__file__).resolve().parent.parent
ONE_SHOT = {"migrate", "create-bucket"}
"""Services that run to completion; the others stay up and report their health."""
BACKGROUND = {"worker", "scheduler"}
"""Services that stay up without serving a port: the image's HTTP healthcheck is not theirs."""

EXPECTED_COMMANDS = {
    "api": "depot serve",
    "migrate": "depot migrate upgrade",
    "worker": "depot worker",
    "scheduler": "depot scheduler",
}
"""The subcommand each service built from the Dockerfile runs."""


@functools.cache
def _compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return document


def _services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = _compose()["services"]
    return services


def _depot_services() -> list[str]:
    """The services that run the image built from the Dockerfile."""
    return [name for name, service in _services().items() if "build" in service]


def _words(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else command


def _environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment, written either as a mapping or as KEY=value lines."""
    environment = service.get("environment", {})
    if isinstance(environment, list):
        return dict(line.partition("=")[::2] for line in environment)
    return {name: str(value) for name, value in environment.items()}


@functools.cache
def _dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (INSTRUCTION, arguments) pairs."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    pairs = [line.partition(" ")[::2] for line in lines if line and not line.startswith("#")]
    return [(instruction.upper(), arguments.strip()) for instruction, arguments in pairs]


def _final_stage(instruction: str) -> list[str]:
    """The arguments of each ``instruction`` in the stage that becomes the image."""
    instructions = _dockerfile()
    start = max(i for i, (name, _) in enumerate(instructions) if name == "FROM")
    return [arguments for name, arguments in instructions[start:] if name == instruction]


def _depot_command(words: Sequence[str], path: str) -> dict[str, Any]:
    """Check that ``words`` run the subcommand ``path`` with valid options; return its params.

    ``--help`` shows how click resolves the words (and rejects unknown options
    at every level); parsing the rest with the subcommand itself then converts
    every value and requires every argument, without running anything.
    """
    assert words[0] == "depot", f"{shlex.join(words)} does not run depot"
    result = CliRunner().invoke(main, [*words[1:], "--help"], prog_name="depot")
    assert result.exit_code == 0, f"{shlex.join(words)}:\n{result.output}"
    assert result.output.startswith(f"Usage: {path} "), result.output
    names = path.split()
    command: click.Command = main
    for name in names[1:]:
        assert isinstance(command, click.Group)
        command = command.commands[name]
    try:
        with command.make_context(path, list(words[len(names) :])) as context:
            return dict(context.params)
    except click.ClickException as exc:
        raise AssertionError(f"{shlex.join(words)}: {exc.format_message()}") from exc


def _healthcheck(service: dict[str, Any]) -> list[str]:
    """The service's healthcheck command, or [] if it has none."""
    healthcheck = service.get("healthcheck") or {}
    if healthcheck.get("disable"):
        return []
    return _words(healthcheck.get("test", []))


def _dockerfile_cmd() -> list[str]:
    (cmd,) = _final_stage("CMD")
    words: list[str] = json.loads(cmd)  # exec form: no shell between Docker and depot
    return words


def _assert_real_settings(names: Sequence[str]) -> None:
    known = {ENV_PREFIX + field.upper() for field in Settings.model_fields}
    depot_names = {name for name in names if name.startswith(ENV_PREFIX)}
    assert depot_names, "no DEPOT_* variable found"
    assert depot_names <= known, f"not Depot settings: {sorted(depot_names - known)}"


def test_every_depot_service_has_an_expected_command() -> None:
    assert set(_depot_services()) == set(EXPECTED_COMMANDS)


@pytest.mark.parametrize(("name", "path"), EXPECTED_COMMANDS.items())
def test_depot_services_run_a_real_depot_command(name: str, path: str) -> None:
    _depot_command(_words(_services()[name]["command"]), path)


@pytest.mark.parametrize(
    ("words", "path"),
    [
        (["depot", "serve", "--bogus"], "depot serve"),
        (["depot", "serve", "--port", "http"], "depot serve"),
        (["depot", "migrate", "upgrad"], "depot migrate upgrade"),
        (["depot", "migrate", "downgrade"], "depot migrate downgrade"),
        (["depot", "migrate", "upgrade"], "depot serve"),
        (["depot", "worker", "--threads", "0"], "depot worker"),
        (["depot", "scheduler", "--interval", "5"], "depot scheduler"),
        (["depot", "schedule"], "depot scheduler"),
    ],
)
def test_the_command_check_rejects_broken_commands(words: list[str], path: str) -> None:
    with pytest.raises(AssertionError):
        _depot_command(words, path)


@pytest.mark.parametrize("name", list(_services()))
def test_long_running_services_report_their_health(name: str) -> None:
    has_healthcheck = bool(_healthcheck(_services()[name]))
    assert has_healthcheck is (name not in ONE_SHOT | BACKGROUND)


@pytest.mark.parametrize("name", sorted(BACKGROUND))
def test_background_services_turn_the_images_healthcheck_off(name: str) -> None:
    # Left unset, the Dockerfile's HEALTHCHECK (the api's port) would mark them unhealthy.
    assert _services()[name]["healthcheck"] == {"disable": True}


@pytest.mark.parametrize("name", list(_services()))
def test_services_wait_until_their_dependencies_are_ready(name: str) -> None:
    for dependency, options in _services()[name].get("depends_on", {}).items():
        expected = "service_completed_successfully" if dependency in ONE_SHOT else "service_healthy"
        assert options["condition"] == expected, f"{name} -> {dependency}"


@pytest.mark.parametrize(
    ("name", "dependencies"),
    [
        ("api", {"postgres", "redis", "migrate", "minio", "create-bucket"}),
        ("worker", {"postgres", "redis", "migrate", "minio", "create-bucket"}),
        ("scheduler", {"postgres", "redis", "migrate", "minio", "create-bucket"}),
        ("migrate", {"postgres"}),
        ("create-bucket", {"minio"}),
    ],
)
def test_services_depend_on_what_they_use(name: str, dependencies: set[str]) -> None:
    assert dependencies <= set(_services()[name]["depends_on"])


def _outside_images() -> list[str]:
    return [name for name, service in _services().items() if "build" not in service]


@pytest.mark.parametrize("name", _outside_images())
def test_outside_images_are_pinned_to_a_version(name: str) -> None:
    """``compose up`` a year from now runs what was tested, not whatever ``latest`` became."""
    image: str = _services()[name]["image"]
    tag = image.rpartition("/")[2].partition(":")[2]
    assert tag, f"{name}: pin {image} to a version tag"
    assert tag != "latest", f"{name}: pin {image} to a version tag"


def test_named_volumes_are_declared() -> None:
    declared = set(_compose().get("volumes") or {})
    for service in _services().values():
        for volume in service.get("volumes", []):
            source = volume.partition(":")[0]
            if not source.startswith((".", "/", "~")):
                assert source in declared, source


@pytest.mark.parametrize("name", _depot_services())
def test_compose_environment_names_real_settings(name: str) -> None:
    _assert_real_settings(list(_environment(_services()[name])))


def test_the_api_runs_in_production_on_the_migrated_database() -> None:
    api, migrate = _environment(_services()["api"]), _environment(_services()["migrate"])
    assert api["DEPOT_ENVIRONMENT"] == "production"
    assert api["DEPOT_DATABASE_URL"] == migrate["DEPOT_DATABASE_URL"]
    # `:?` makes compose refuse to start instead of running without a secret.
    assert api["DEPOT_SECRET_KEY"].startswith("${DEPOT_SECRET_KEY:?")


@pytest.mark.parametrize("name", sorted(BACKGROUND | {"migrate"}))
def test_every_depot_process_shares_the_apis_configuration(name: str) -> None:
    assert _environment(_services()[name]) == _environment(_services()["api"])


def test_the_api_stores_files_in_the_minio_bucket_compose_creates() -> None:
    api, minio = _environment(_services()["api"]), _environment(_services()["minio"])
    location = parse_s3_url(api["DEPOT_STORAGE_URL"])
    assert urlsplit(location.endpoint_url or "").netloc == "minio:9000"
    assert f"mb --ignore-existing depot/{location.bucket}" in shlex.join(
        _words(_services()["create-bucket"]["command"])
    )
    assert api["AWS_ACCESS_KEY_ID"] == minio["MINIO_ROOT_USER"]
    assert api["AWS_SECRET_ACCESS_KEY"] == minio["MINIO_ROOT_PASSWORD"]


def test_the_api_publishes_and_probes_the_port_it_serves_on() -> None:
    api = _services()["api"]
    port = _depot_command(_words(api["command"]), "depot serve")["port"]
    container_ports = {str(mapping).split(":")[-1].partition("/")[0] for mapping in api["ports"]}
    assert container_ports == {str(port)}
    assert f"http://127.0.0.1:{port}/healthz" in shlex.join(_healthcheck(api))


def test_the_image_serves_depot() -> None:
    port = _depot_command(_dockerfile_cmd(), "depot serve")["port"]
    exposed = {word.partition("/")[0] for line in _final_stage("EXPOSE") for word in line.split()}
    assert exposed == {str(port)}
    (healthcheck,) = _final_stage("HEALTHCHECK")
    assert f"http://127.0.0.1:{port}/healthz" in healthcheck


def test_the_image_runs_as_a_non_root_user() -> None:
    users = _final_stage("USER")
    assert users, "the final stage has no USER"
    user = users[-1].partition(":")[0]
    assert user not in {"root", "0"}


def test_the_image_environment_names_real_settings() -> None:
    words = [word for line in _final_stage("ENV") for word in shlex.split(line)]
    _assert_real_settings([word.partition("=")[0] for word in words])


def test_dockerignore_keeps_what_the_image_copies() -> None:
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    ignored = [line for line in lines if line and not line.startswith(("#", "!"))]
    copied = [
        source
        for name, arguments in _dockerfile()
        if name == "COPY" and "--from=" not in arguments
        for source in arguments.split()[:-1]
        if not source.startswith("--")
    ]
    assert "README.md" in copied
    for source in copied:
        assert not any(fnmatch.fnmatch(source, pattern) for pattern in ignored), source


# -- deploy/nginx.conf ----------------------------------------------------------------

NGINX_CONF = ROOT / "deploy" / "nginx.conf"


def test_nginx_configuration_is_valid(tmp_path: Path) -> None:
    """``nginx -t`` accepts the shipped proxy configuration (CI installs nginx)."""
    nginx = shutil.which("nginx", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
    if nginx is None:
        if os.environ.get("CI"):
            pytest.fail("nginx is not installed, but CI must check deploy/nginx.conf")
        pytest.skip("nginx is not installed; apt-get install nginx to check deploy/nginx.conf")
    checked = subprocess.run(
        [nginx, "-t", "-q", "-p", str(tmp_path), "-e", "stderr", "-c", str(NGINX_CONF)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr


def test_nginx_configuration_does_what_the_readme_says() -> None:
    conf = NGINX_CONF.read_text()
    for directive in (
        "client_header_timeout",
        "client_body_timeout",
        "client_max_body_size",
        "large_client_header_buffers",
        "proxy_set_header Upgrade $http_upgrade",
        "proxy_request_buffering off",
        "proxy_buffering off",
        "X-Forwarded-For $proxy_add_x_forwarded_for",
        "DEPOT_TRUSTED_PROXIES",
    ):
        assert directive in conf, f"deploy/nginx.conf lacks {directive!r}"
