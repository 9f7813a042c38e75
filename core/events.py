"""What Depot announces, to which streams, and the one way to announce it.

Every event is a frozen dataclass whose payload is JSON (:meth:`to_data`,
read back by :func:`from_data`); :mod:`core.eventlog` carries the payloads.
A job's subscribers read ``job:<id>``; a user's read ``user:<id>``, which
keeps the newest ``USER_STREAM_LENGTH`` events:

==================  ====================================  =====================
event               told to                               ``type`` in the data
==================  ====================================  =====================
JobStatusChanged    the job's stream and its owner's      ``JOB_STATUS``
JobProgressed       the job's stream only                 ``JOB_STATUS``
FileCreated         the owner's stream                    ``FILE_CREATED``
FileDeleted         the owner's stream                    ``FILE_DELETED``
WebhookDisabled     the owner's stream                    ``WEBHOOK_DISABLED``
CredentialsRevoked  the user's ``credentials:<id>``        ``CREDENTIALS_REVOKED``
==================  ====================================  =====================

A step's job (``pipeline_id`` set, see :mod:`core.pipelines`) is told to its
pipeline's stream as well, naming its ``step``: one stream, in one cursor
order, carries the whole pipeline.

An upload's pipeline (``core.pipelines``) hears the upload's bytes arrive
as ``JobProgressed`` events carrying ``upload`` (received, total) before
its steps' events.

``CredentialsRevoked`` tells the user's open WebSockets to recheck their
credential now (``api.websocket``); nobody replays it, so its stream keeps
one event, for ``CREDENTIALS_STREAM_SECONDS``.

The database is the truth and the log is transport, so :func:`announce` is
called after the change has committed and never raises: an event it cannot
deliver is logged and lost, and subscribers fall back on the database.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Final, Self

import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core import metrics
from core.eventlog import EventLog
from core.models import File, Job, JobStatus
from core.time import utcnow
from core.tracing import trace_id_of

logger = structlog.get_logger("depot.events")

# Events a user's own stream keeps (older ones are trimmed as new ones come).
USER_STREAM_LENGTH: Final = 1000

# How long a user's credentials stream is kept after its last event: listeners
# hear an event live, nobody replays them.
CREDENTIALS_STREAM_SECONDS: Final = 60

# What says the bus was briefly unreachable, so that trying again may help.
_UNREACHABLE: Final = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError)


def job_stream(job_id: uuid.UUID) -> str:
    """The stream a job's subscribers (``jobEvents``) read."""
    return f"job:{job_id}"


def user_stream(user_id: uuid.UUID) -> str:
    """The stream a user's subscribers (``myEvents``) read."""
    return f"user:{user_id}"


def credentials_stream(user_id: uuid.UUID) -> str:
    """The stream a user's open WebSockets listen to for revocations."""
    return f"credentials:{user_id}"


@dataclass(frozen=True, slots=True, kw_only=True)
class JobStatusChanged:
    """A job's state at one moment; the last one of a job has a final status."""

    TYPE: ClassVar[str] = "JOB_STATUS"

    job_id: uuid.UUID
    status: JobStatus
    progress: float
    message: str | None
    at: datetime
    # The trace of the request that started the job (core.tracing), if traced.
    trace_id: str | None = None
    # A pipeline step's job: its pipeline and step.
    pipeline_id: uuid.UUID | None = None
    step: str | None = None
    # An upload's pipeline while its file arrives: bytes received of the total
    # (core.pipelines.upload_progress); None on every other event.
    upload_received: int | None = None
    upload_total: int | None = None

    @classmethod
    def of(cls, job: Job, at: datetime | None = None) -> Self:
        """``job`` as it is now (or as it was ``at``, for a state read back later)."""
        return cls(
            job_id=job.id,
            status=job.status,
            progress=job.progress,
            message=job.message,
            at=at or utcnow(),
            trace_id=trace_id_of(job.traceparent),
            pipeline_id=job.pipeline_id,
            step=job.step,
        )

    def to_data(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "jobId": str(self.job_id),
            "status": self.status.value,
            "progress": self.progress,
            "message": self.message,
            "at": self.at.isoformat(),
            **({"traceId": self.trace_id} if self.trace_id else {}),
            **({"pipelineId": str(self.pipeline_id)} if self.pipeline_id else {}),
            **({"step": self.step} if self.step else {}),
            **(
                {"upload": {"received": self.upload_received, "total": self.upload_total}}
                if self.upload_received is not None
                else {}
            ),
        }

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> JobStatusChanged:
        return JobStatusChanged(
            job_id=uuid.UUID(data["jobId"]),
            status=JobStatus(data["status"]),
            progress=float(data["progress"]),
            message=data.get("message"),
            at=datetime.fromisoformat(data["at"]),
            trace_id=data.get("traceId"),
            pipeline_id=uuid.UUID(data["pipelineId"]) if data.get("pipelineId") else None,
            step=data.get("step"),
            upload_received=data["upload"]["received"] if "upload" in data else None,
            upload_total=data["upload"]["total"] if "upload" in data else None,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class JobProgressed(JobStatusChanged):
    """A running job's progress: its subscribers hear it, its owner's stream does not.

    The owner's stream keeps only so many events; progress would push out
    the ones worth replaying. It reads back as a :class:`JobStatusChanged`.
    """


@dataclass(frozen=True, slots=True, kw_only=True)
class _FileEvent:
    TYPE: ClassVar[str]

    file_id: uuid.UUID
    path: str
    job_id: uuid.UUID | None  # the job that produced the file, if one did
    at: datetime

    @classmethod
    def of(cls, file: File) -> Self:
        return cls(file_id=file.id, path=file.path, job_id=file.produced_by_job_id, at=utcnow())

    def to_data(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "fileId": str(self.file_id),
            "path": self.path,
            "jobId": str(self.job_id) if self.job_id else None,
            "at": self.at.isoformat(),
        }

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> Self:
        job_id = data.get("jobId")
        return cls(
            file_id=uuid.UUID(data["fileId"]),
            path=data["path"],
            job_id=uuid.UUID(job_id) if job_id else None,
            at=datetime.fromisoformat(data["at"]),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class FileCreated(_FileEvent):
    """A file arrived: an upload completed, or a job that wrote it succeeded."""

    TYPE: ClassVar[str] = "FILE_CREATED"


@dataclass(frozen=True, slots=True, kw_only=True)
class FileDeleted(_FileEvent):
    """A file went to the trash or was purged, by its owner or by maintenance."""

    TYPE: ClassVar[str] = "FILE_DELETED"


@dataclass(frozen=True, slots=True, kw_only=True)
class WebhookDisabled:
    """A webhook failed for too long and was disabled (:func:`core.webhook_deliveries.disable`)."""

    TYPE: ClassVar[str] = "WEBHOOK_DISABLED"

    webhook_id: uuid.UUID
    url: str
    at: datetime

    def to_data(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "webhookId": str(self.webhook_id),
            "url": self.url,
            "at": self.at.isoformat(),
        }

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> WebhookDisabled:
        return cls(
            webhook_id=uuid.UUID(data["webhookId"]),
            url=data["url"],
            at=datetime.fromisoformat(data["at"]),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class CredentialsRevoked:
    """Some of a user's credentials ended: sessions, access tokens, or the account itself.

    It names no credential: each socket rechecks its own against the
    database, which is the truth, so a socket whose credential still holds
    stays open.
    """

    TYPE: ClassVar[str] = "CREDENTIALS_REVOKED"

    user_id: uuid.UUID
    at: datetime

    @classmethod
    def of(cls, user_id: uuid.UUID) -> Self:
        return cls(user_id=user_id, at=utcnow())

    def to_data(self) -> dict[str, Any]:
        return {"type": self.TYPE, "userId": str(self.user_id), "at": self.at.isoformat()}


Event = JobStatusChanged | FileCreated | FileDeleted | WebhookDisabled
"""Whatever a user's or a job's stream can hold (a :class:`JobProgressed` is a status change)."""

_BY_TYPE: Final[
    dict[
        str,
        type[JobStatusChanged] | type[FileCreated] | type[FileDeleted] | type[WebhookDisabled],
    ]
] = {kind.TYPE: kind for kind in (JobStatusChanged, FileCreated, FileDeleted, WebhookDisabled)}


def from_data(data: Mapping[str, Any]) -> Event:
    """The event a payload read from a stream describes."""
    return _BY_TYPE[data["type"]].from_data(data)


async def announce(
    log: EventLog,
    event: Event | CredentialsRevoked,
    *,
    owner_id: uuid.UUID,
    retention_seconds: int | None = None,
    patience: float = 0.0,
) -> bool:
    """Tell ``event``'s streams, best effort; returns whether they were told.

    Call it after the change the event describes has committed: a failure is
    logged as one warning and swallowed, because the change stands either way
    (subscribers read a job's final state from the database). While the bus
    is unreachable it tries again for up to ``patience`` seconds: a worker can
    afford to wait, a request cannot. A final status starts the job stream's
    ``retention_seconds`` clock, after which it can no longer be replayed.
    """
    delay, waited = 0.1, 0.0
    while True:
        try:
            await _append(log, event, owner_id, retention_seconds)
        except Exception as exc:  # noqa: BLE001 - the change has committed; only the news is lost
            if isinstance(exc, _UNREACHABLE) and waited < patience:
                logger.info("event bus unreachable; trying again", error=str(exc))
                await asyncio.sleep(delay)
                waited += delay
                delay = min(delay * 2, 2.0)
                continue
            logger.warning("event not announced", **_about(event), error=str(exc))
            metrics.EVENT_PUBLISH_FAILURES.labels(event.TYPE).inc()
            return False
        return True


async def _append(
    log: EventLog,
    event: Event | CredentialsRevoked,
    owner_id: uuid.UUID,
    retention_seconds: int | None,
) -> None:
    # Every stream an event goes to in one call: one round trip to Redis.
    data = event.to_data()
    if isinstance(event, JobStatusChanged):
        streams: list[tuple[str, int | None]] = [(job_stream(event.job_id), None)]
        if event.pipeline_id is not None:
            streams.append((job_stream(event.pipeline_id), None))
        ends = None
        if not isinstance(event, JobProgressed):
            streams.append((user_stream(owner_id), USER_STREAM_LENGTH))
            if event.status.is_final:
                ends = retention_seconds
        await log.append_all(streams, data, expire_first=ends)
    elif isinstance(event, CredentialsRevoked):
        stream = credentials_stream(event.user_id)
        await log.append_all([(stream, 1)], data, expire_first=CREDENTIALS_STREAM_SECONDS)
    else:
        await log.append(user_stream(owner_id), data, max_len=USER_STREAM_LENGTH)


def _about(event: Event | CredentialsRevoked) -> dict[str, str]:
    if isinstance(event, JobStatusChanged):
        return {"type": event.TYPE, "job_id": str(event.job_id)}
    if isinstance(event, CredentialsRevoked):
        return {"type": event.TYPE, "user_id": str(event.user_id)}
    if isinstance(event, WebhookDisabled):
        return {"type": event.TYPE, "webhook_id": str(event.webhook_id)}
    return {"type": event.TYPE, "file_id": str(event.file_id)}
