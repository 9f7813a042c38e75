"""The event vocabulary: payloads that read back as they were written, and ``announce``.

``announce`` is checked on the memory log, whose clock the tests hold, so that
retention is seen without waiting for it.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from structlog.testing import capture_logs

from core.eventlog import Entry, MemoryEventLog
from core.events import (
    USER_STREAM_LENGTH,
    FileCreated,
    FileDeleted,
    JobProgressed,
    JobStatusChanged,
    announce,
    from_data,
    job_stream,
    user_stream,
)
from core.models import JobStatus

pytestmark = pytest.mark.anyio

AT = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
JOB, FILE, OWNER = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
RETENTION = 60


def _status(status: JobStatus = JobStatus.RUNNING) -> JobStatusChanged:
    return JobStatusChanged(job_id=JOB, status=status, progress=0.5, message="half", at=AT)


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_payloads_keep_their_names_and_read_back_as_written() -> None:
    status = _status()
    assert status.to_data() == {
        "type": "JOB_STATUS",
        "jobId": str(JOB),
        "status": "running",
        "progress": 0.5,
        "message": "half",
        "at": AT.isoformat(),
    }
    created = FileCreated(file_id=FILE, path="out/a.png", job_id=JOB, at=AT)
    deleted = FileDeleted(file_id=FILE, path="a.png", job_id=None, at=AT)
    assert deleted.to_data() == {
        "type": "FILE_DELETED",
        "fileId": str(FILE),
        "path": "a.png",
        "jobId": None,
        "at": AT.isoformat(),
    }
    for event in (status, created, deleted):
        assert from_data(event.to_data()) == event
    # Progress is a status change to whoever reads it.
    progress = JobProgressed(
        job_id=JOB, status=JobStatus.RUNNING, progress=0.5, message="half", at=AT
    )
    assert from_data(progress.to_data()) == status


async def test_a_status_change_reaches_the_job_and_its_owner() -> None:
    clock = Clock()
    log = MemoryEventLog(clock)
    assert await announce(log, _status(), owner_id=OWNER, retention_seconds=RETENTION)
    assert await announce(
        log, _status(JobStatus.SUCCEEDED), owner_id=OWNER, retention_seconds=RETENTION
    )
    job = [from_data(entry.data) for entry in await log.read(job_stream(JOB), None)]
    mine = [from_data(entry.data) for entry in await log.read(user_stream(OWNER), None)]
    assert job == mine == [_status(), _status(JobStatus.SUCCEEDED)]
    # A final status starts the job stream's clock; the owner's stream stays.
    clock.now += RETENTION
    assert await log.read(job_stream(JOB), None) == []
    assert len(await log.read(user_stream(OWNER), None)) == 2


async def test_progress_reaches_the_job_only_and_never_expires_it() -> None:
    clock = Clock()
    log = MemoryEventLog(clock)
    progress = JobProgressed(
        job_id=JOB, status=JobStatus.RUNNING, progress=0.1, message=None, at=AT
    )
    assert await announce(log, progress, owner_id=OWNER, retention_seconds=RETENTION)
    assert await log.read(user_stream(OWNER), None) == []
    clock.now += RETENTION
    assert len(await log.read(job_stream(JOB), None)) == 1


async def test_file_events_reach_the_owner_whose_stream_keeps_the_newest() -> None:
    log = MemoryEventLog()
    for n in range(USER_STREAM_LENGTH + 5):
        event = FileCreated(file_id=FILE, path=f"{n}.png", job_id=None, at=AT)
        await announce(log, event, owner_id=OWNER)
    kept = await log.read(user_stream(OWNER), None, limit=2 * USER_STREAM_LENGTH)
    assert len(kept) == USER_STREAM_LENGTH
    assert kept[0].data["path"] == "5.png"
    await announce(log, FileDeleted(file_id=FILE, path="5.png", job_id=None, at=AT), owner_id=OWNER)
    assert await log.read(job_stream(JOB), None) == []


class FlakyLog(MemoryEventLog):
    """A memory log whose first ``failures`` appends raise ``error``."""

    def __init__(self, failures: int, error: Exception) -> None:
        super().__init__()
        self.failures, self.error, self.calls = failures, error, 0

    async def append(self, stream: str, data: Any, *, max_len: int | None = None) -> Entry:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return await super().append(stream, data, max_len=max_len)


async def test_a_failure_is_one_warning_never_an_exception() -> None:
    log = FlakyLog(failures=1, error=RedisConnectionError("down"))
    with capture_logs() as logs:
        assert not await announce(log, _status(), owner_id=OWNER)
    assert log.calls == 1, "no patience, no second try"
    assert [(entry["event"], entry["log_level"], entry["job_id"]) for entry in logs] == [
        ("event not announced", "warning", str(JOB))
    ]


async def test_patience_outlasts_a_blip_but_not_a_bug() -> None:
    blip = FlakyLog(failures=2, error=RedisConnectionError("down"))
    with capture_logs() as logs:
        assert await announce(blip, _status(), owner_id=OWNER, patience=5)
    assert not [entry for entry in logs if entry["log_level"] == "warning"]
    assert len(await blip.read(job_stream(JOB), None)) == 1
    assert len(await blip.read(user_stream(OWNER), None)) == 1

    bug = FlakyLog(failures=1, error=RuntimeError("a bug"))
    with capture_logs() as logs:
        assert not await announce(bug, _status(), owner_id=OWNER, patience=5)
    assert bug.calls == 1, "a bug is not worth waiting for"
    assert [entry["log_level"] for entry in logs] == ["warning"]


async def test_patience_runs_out() -> None:
    down = FlakyLog(failures=1_000, error=RedisConnectionError("down"))
    with capture_logs() as logs:
        assert not await announce(down, _status(), owner_id=OWNER, patience=0.2)
    assert 2 <= down.calls <= 4
    assert [entry["log_level"] for entry in logs].count("warning") == 1
