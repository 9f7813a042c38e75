"""A smoke of the Locust scenario in loadtest/ against a real ``depot serve``.

Five users register, sign in, page, upload small and large files, run a job
and follow it over the WebSocket, download and sign out, headless, until each
has made one whole visit (``LOADTEST_VISITS``; half a minute at most). Any
failed request, any exception in the scenario, or a step that never ran fails
the test: the load test stays runnable against the API as it changes. The
figures it prints are not measurements (this machine is shared);
loadtest/README.md says how to run it for those.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import answers_http, free_port, wait_until_ready

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SMOKE_SECONDS = 30
"""The most the run may take; it ends sooner, once every user has visited once."""
USERS = 5
VISITS = 1
STEPS = {
    "register",
    "login",
    "files",
    "uploadFile (multipart)",
    "createUpload",
    "direct upload (bytes)",
    "completeUpload",
    "startJob",
    "jobEvents (until final)",
    "downloadUrl",
    "download",
    "logout",
}
"""Every request the scenario names: each must have run at least once."""


@pytest.mark.loadtest
def test_the_load_test_runs_against_depot_serve_without_a_failure(tmp_path: Path) -> None:
    port = free_port()
    environment = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "DEPOT_VAR_DIR": str(tmp_path / "var"),
        # OWASP's cheapest Argon2id: a sign-in costs a third, so each user gets
        # through a whole visit within the half minute on a busy CI machine.
        "DEPOT_PASSWORD_HASH_MEMORY_KIB": "19456",
        "DEPOT_PASSWORD_HASH_ITERATIONS": "2",
    }
    if "PYTHONPATH" in os.environ:
        environment["PYTHONPATH"] = os.environ["PYTHONPATH"]  # a worktree runs its own code
    log = tmp_path / "depot.log"
    with log.open("wb") as output:
        server = subprocess.Popen(
            [str(BIN / "depot"), "serve", "--port", str(port)],
            cwd=tmp_path,
            env=environment,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until_ready(
            server,
            answers_http(f"http://127.0.0.1:{port}/healthz"),
            "depot serve",
            output=lambda: log.read_text(errors="replace"),
        )
        run = subprocess.run(
            [
                str(BIN / "locust"),
                *("-f", str(ROOT / "loadtest" / "locustfile.py")),
                *("--host", f"http://127.0.0.1:{port}"),
                "--headless",
                *("--users", str(USERS), "--spawn-rate", str(USERS)),
                *("--run-time", f"{SMOKE_SECONDS}s", "--stop-timeout", "30s"),
                *("--csv", str(tmp_path / "smoke"), "--only-summary"),
                *("--exit-code-on-error", "1"),
            ],
            cwd=tmp_path,
            env={
                **environment,
                "LOADTEST_LARGE_UPLOAD_MIB": "2",
                "LOADTEST_WAIT_SECONDS": "0.2-1",
                "LOADTEST_VISITS": str(VISITS),
            },
            capture_output=True,
            text=True,
            timeout=SMOKE_SECONDS + 90,
            check=False,
        )
    finally:
        server.terminate()
        server.wait(timeout=30)
    report = (
        f"{run.stdout}\n{run.stderr}\n--- depot serve:\n{log.read_text(errors='replace')[-4000:]}"
    )
    assert run.returncode == 0, report
    with (tmp_path / "smoke_stats.csv").open() as stats:
        rows = {row["Name"]: row for row in csv.DictReader(stats) if row["Name"] != "Aggregated"}
    assert set(rows) == STEPS, report
    for name, row in rows.items():
        assert int(row["Request Count"]) > 0, f"{name} never ran\n{report}"
        assert int(row["Failure Count"]) == 0, f"{name} failed\n{report}"
    with (tmp_path / "smoke_exceptions.csv").open() as exceptions:
        assert not list(csv.DictReader(exceptions)), report
