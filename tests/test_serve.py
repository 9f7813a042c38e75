"""``depot serve`` end to end: the installed script, a real port, a clean environment.

Each process starts in its own directory with only PATH, HOME and DEPOT_VAR_DIR
set, the way a newcomer runs it: no secret, so development generates one.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.processes import START_TIMEOUT_S, answers_http, free_port, wait_until_ready
from tests.support import STRONG_SECRET

DEPOT = Path(sys.executable).parent / "depot"
STOP_TIMEOUT_S = 10
TYPENAME = {"query": "{ __typename }"}


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    client: httpx.Client
    directory: Path
    log: Path

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


def _environment(directory: Path, **variables: str) -> dict[str, str]:
    """Nothing from the test run's environment but PATH and HOME."""
    return {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", str(directory)),
        "DEPOT_VAR_DIR": str(directory / "var"),
        **variables,
    }


@contextlib.contextmanager
def _serving(directory: Path, **variables: str) -> Iterator[Server]:
    """Run ``depot serve`` in ``directory`` until it answers; kill it afterwards."""
    port = free_port()
    log = directory / "depot.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [str(DEPOT), "serve", "--port", str(port)],
            cwd=directory,
            env=_environment(directory, **variables),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            server = Server(process, client, directory, log)
            healthz = answers_http(f"http://127.0.0.1:{port}/healthz")
            wait_until_ready(
                process, healthz, "depot serve", timeout_s=START_TIMEOUT_S, output=server.output
            )
            yield server
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=STOP_TIMEOUT_S)


def _run_serve(directory: Path, **variables: str) -> subprocess.CompletedProcess[str]:
    """``depot serve`` that is expected to stop by itself."""
    return subprocess.run(
        [str(DEPOT), "serve", "--port", str(free_port())],
        cwd=directory,
        env=_environment(directory, **variables),
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
        check=False,
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with _serving(tmp_path_factory.mktemp("serve")) as server:
        yield server


def test_query_over_get_and_post(server: Server) -> None:
    over_get = server.client.get("/graphql", params=TYPENAME)
    over_post = server.client.post("/graphql", json=TYPENAME)
    for response in (over_get, over_post):
        assert response.status_code == 200
        assert response.json() == {"data": {"__typename": "Query"}}


def test_browser_gets_graphiql(server: Server) -> None:
    response = server.client.get("/graphql", headers={"accept": "text/html"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "graphiql" in response.text.lower()


def test_response_has_a_request_id(server: Server) -> None:
    response = server.client.get("/healthz")
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])


def test_embedded_database_and_secret_live_under_var(server: Server) -> None:
    var = server.directory / "var"
    assert (var / "depot.db").is_file()
    secret = var / "secret_key"
    assert len(secret.read_text().strip()) >= 32
    assert secret.stat().st_mode & 0o077 == 0, "the generated secret is readable by others"


def test_sigterm_stops_the_server_cleanly(tmp_path: Path) -> None:
    with _serving(tmp_path) as server:
        server.client.get("/healthz", headers={"X-Request-ID": "before-sigterm"})
        server.process.send_signal(signal.SIGTERM)
        status = server.process.wait(timeout=STOP_TIMEOUT_S)
    output = server.output()
    for line in ("depot ready", "Application startup complete", "Uvicorn running on"):
        assert line in output
    assert "before-sigterm" in output  # the access line
    assert "Application shutdown complete" in output
    assert status == 0, f"exit status {status} after a graceful shutdown"


def test_production_without_secret_exits_with_status_2(tmp_path: Path) -> None:
    completed = _run_serve(tmp_path, DEPOT_ENVIRONMENT="production")
    assert completed.returncode == 2, completed.stderr
    assert any(
        line.strip().startswith("DEPOT_SECRET_KEY") for line in completed.stderr.splitlines()
    ), completed.stderr
    assert not (tmp_path / "var" / "secret_key").exists()


def test_production_refuses_an_unmigrated_database(tmp_path: Path) -> None:
    database = tmp_path / "var" / "depot.db"
    database.parent.mkdir()
    sqlite3.connect(database).close()
    completed = _run_serve(tmp_path, DEPOT_ENVIRONMENT="production", DEPOT_SECRET_KEY=STRONG_SECRET)
    output = completed.stdout + completed.stderr
    assert completed.returncode != 0, output
    assert "run `depot migrate upgrade`" in output


_FAILED_LOGIN = {
    "query": "mutation ($input: LoginInput!) { login(input: $input) { accessToken } }",
}
_CHEAP_HASHING = {
    "DEPOT_PASSWORD_HASH_MEMORY_KIB": "19456",
    "DEPOT_PASSWORD_HASH_ITERATIONS": "2",
    "DEPOT_LOGIN_LIMIT_PER_ACCOUNT": "100/minute",
    "DEPOT_LOGIN_LIMIT_PER_ADDRESS": "3/minute",
}


def _codes_of_failed_logins(server: Server, count: int) -> list[str]:
    """Failed sign-ins for ``count`` different accounts, each claiming another address."""
    codes = []
    for n in range(count):
        variables = {"input": {"email": f"nobody{n}@example.com", "password": "wrong password"}}
        response = server.client.post(
            "/graphql",
            json={**_FAILED_LOGIN, "variables": variables},
            headers={"X-Forwarded-For": f"203.0.113.{n + 1}"},
        )
        codes.append(response.json()["errors"][0]["extensions"]["code"])
    return codes


def test_forwarded_for_from_an_untrusted_peer_is_ignored(tmp_path: Path) -> None:
    with _serving(tmp_path, **_CHEAP_HASHING) as server:
        codes = _codes_of_failed_logins(server, 4)
    # Every attempt counts against 127.0.0.1, whatever address it claims.
    assert codes == ["UNAUTHENTICATED"] * 3 + ["RATE_LIMITED"]


def test_forwarded_for_from_a_trusted_proxy_names_the_client(tmp_path: Path) -> None:
    with _serving(tmp_path, DEPOT_TRUSTED_PROXIES="127.0.0.1", **_CHEAP_HASHING) as server:
        codes = _codes_of_failed_logins(server, 4)
    # Four clients behind the proxy, one failure each.
    assert codes == ["UNAUTHENTICATED"] * 4
