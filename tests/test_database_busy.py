"""SQLite's writers take turns: a job mutation that waits past the busy timeout for
another writer is tried again, and one that still cannot write is answered
``SERVICE_UNAVAILABLE`` with nothing of it kept.

Another writer is a connection of Python's own ``sqlite3`` to the app's file
holding the write lock (``BEGIN IMMEDIATE``), as a second process would.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from core.db import BUSY_TRIES
from tests.conftest import make_settings, serve_app
from tests.support import (
    error_codes,
    graphql,
    many_entries_zip,
    signed_in,
    upload_file,
    wait_for_job,
)

pytestmark = pytest.mark.anyio

BUSY_MS = 200
START = "mutation ($input: JobInput!) { startJob(input: $input) { id status } }"
CANCEL = "mutation ($id: ID!) { cancelJob(id: $id) { id status } }"
COUNT = "{ jobs { totalCount } }"


class _Writer:
    """Another writer: holds the database's write lock from :meth:`lock` to :meth:`release`."""

    def __init__(self, path: Path) -> None:
        self._connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._held = threading.Lock()

    def lock(self) -> None:
        self._connection.execute("BEGIN IMMEDIATE")
        self._held.acquire()

    def release(self) -> None:
        if self._held.acquire(blocking=False):
            self._held.release()
            return  # not held
        self._connection.execute("ROLLBACK")
        self._held.release()

    def close(self) -> None:
        self.release()
        self._connection.close()


@contextmanager
def _writing(path: Path) -> Iterator[_Writer]:
    """Another writer holding the write lock for the block (or until it releases it)."""
    writer = _Writer(path)
    writer.lock()
    try:
        yield writer
    finally:
        writer.close()


def _refused(body: dict[str, Any]) -> None:
    assert error_codes(body) == ["SERVICE_UNAVAILABLE"], body
    assert body["errors"][0]["extensions"]["retryAfter"] == 1
    assert "nothing was changed" in body["errors"][0]["message"]


async def test_a_job_mutation_is_tried_again_while_sqlite_is_locked_then_refused(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path, sqlite_busy_timeout_ms=BUSY_MS, max_running_jobs_per_user=1)
    path = settings.var_dir / "depot.db"
    async with serve_app(settings) as client:
        _, headers = await signed_in(client)
        file = await upload_file(client, headers, "a.bin", b"abc")
        verify = {"input": {"verify": {"fileId": file["id"]}}}
        pipeline = {
            "input": {
                "pipeline": {
                    "fileIds": [file["id"]],
                    "steps": [{"name": "check", "run": {"verify": {}}}],
                }
            }
        }

        # Locked throughout: every try waits out the busy timeout, then a clear refusal,
        # and no job (nor pipeline, nor step) was recorded.
        for variables in (verify, pipeline):
            with capture_logs() as logs, _writing(path):
                body = await graphql(client, START, variables, headers=headers)
            _refused(body)
            tries = [e for e in logs if e["event"].startswith("database busy")]
            assert len(tries) == BUSY_TRIES, tries
        assert (await graphql(client, COUNT, headers=headers))["data"]["jobs"]["totalCount"] == 0

        # Locked a little longer than one wait: a later try gets through.
        with _writing(path) as other:
            threading.Timer(1.5 * BUSY_MS / 1000, other.release).start()
            body = await graphql(client, START, verify, headers=headers)
        assert "errors" not in body, body
        job = await wait_for_job(client, headers, body["data"]["startJob"]["id"])
        assert job["status"] == "SUCCEEDED"

        # cancelJob alike: refused while locked, and the job was not cancelled. It waits,
        # queued, behind a long job (one job at a time for this user), so that only the
        # cancel could end it early.
        archive = await upload_file(client, headers, "many.zip", many_entries_zip(3000))
        extract = {"input": {"extract": {"fileId": archive["id"], "path": "out"}}}
        long_id = (await graphql(client, START, extract, headers=headers))["data"]["startJob"]["id"]
        await wait_for_job(client, headers, long_id, statuses=("RUNNING",))
        waiting_id = (await graphql(client, START, verify, headers=headers))["data"]["startJob"][
            "id"
        ]
        with _writing(path):
            body = await graphql(client, CANCEL, {"id": waiting_id}, headers=headers)
        _refused(body)
        assert (await graphql(client, CANCEL, {"id": long_id}, headers=headers))["data"]
        job = await wait_for_job(client, headers, waiting_id)
        assert job["status"] == "SUCCEEDED", "the refused cancel changed nothing"
