"""Subscriptions: a job's events, and everything that happens to the signed-in user.

``jobEvents`` replays the job's events after the client's cursor, then
streams live ones, and completes after the final status; a client that
reconnects with the last cursor it saw misses nothing and sees nothing twice.
Events carry the state they announce, so a subscription never re-reads rows
(which would cost a query per event and per subscriber).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator
from datetime import datetime
from enum import Enum
from typing import Any, Self

import strawberry

from core import jobs, metrics, notifications
from core.db import SessionMaker
from core.errors import BadUserInput
from core.eventlog import BadCursor, follow, parse_cursor
from core.events import (
    FileCreated,
    FileDeleted,
    JobStatusChanged,
    WebhookDisabled,
    from_data,
    job_stream,
    user_stream,
)
from core.models import Job as JobRow
from schema.context import Info
from schema.enums import JobStatus
from schema.ids import decode_id_of, encode_id
from schema.permissions import IsAuthenticated
from schema.scalars import BigInt


@strawberry.type(description="The bytes of an upload received so far, of all it will have.")
class UploadProgress:
    received_bytes: BigInt
    total_bytes: BigInt


@strawberry.type(description="A change in a job: its status, progress and message at that moment.")
class JobEvent:
    cursor: str = strawberry.field(description="Give it as `after` to resume after this event.")
    job_id: strawberry.ID
    status: JobStatus
    progress: float
    message: str | None
    at: datetime
    trace_id: str | None = strawberry.field(
        description="The job's trace (`Job.traceId`); null when tracing is off."
    )
    step: str | None = strawberry.field(
        default=None,
        description="In a pipeline's stream, the step whose job this event is of "
        "(`jobId` is that job); null for the pipeline's own events.",
    )
    upload: UploadProgress | None = strawberry.field(
        default=None,
        description="On the stream of a pipeline an upload named: the upload's bytes "
        "received so far (its first events, before the steps'); null on every other event.",
    )

    @classmethod
    def from_event(cls, cursor: str, event: JobStatusChanged) -> Self:
        return cls(
            cursor=cursor,
            job_id=strawberry.ID(encode_id("Job", event.job_id)),
            status=event.status,
            progress=event.progress,
            message=event.message,
            at=event.at,
            trace_id=event.trace_id,
            step=event.step,
            upload=(
                UploadProgress(
                    received_bytes=BigInt(event.upload_received),
                    total_bytes=BigInt(event.upload_total or 0),
                )
                if event.upload_received is not None
                else None
            ),
        )


@strawberry.enum
class UserEventType(Enum):
    JOB_STATUS = "JOB_STATUS"
    FILE_CREATED = "FILE_CREATED"
    FILE_DELETED = "FILE_DELETED"
    WEBHOOK_DISABLED = "WEBHOOK_DISABLED"


@strawberry.type(description="Something that happened to your jobs, files or webhooks.")
class UserEvent:
    cursor: str
    type: UserEventType
    at: datetime
    job_id: strawberry.ID | None = strawberry.field(description="The job concerned, if any.")
    file_id: strawberry.ID | None = strawberry.field(description="The file concerned, if any.")
    path: str | None = strawberry.field(description="The file's path, for file events.")
    status: JobStatus | None = strawberry.field(description="The job's status, for job events.")
    progress: float | None
    message: str | None
    webhook_id: strawberry.ID | None = strawberry.field(
        default=None, description="The webhook concerned, for `WEBHOOK_DISABLED`."
    )

    @classmethod
    def from_event(
        cls, cursor: str, event: JobStatusChanged | FileCreated | FileDeleted | WebhookDisabled
    ) -> Self:
        if isinstance(event, WebhookDisabled):
            return cls(
                cursor=cursor,
                type=UserEventType.WEBHOOK_DISABLED,
                at=event.at,
                job_id=None,
                file_id=None,
                path=None,
                status=None,
                progress=None,
                message=f"The webhook to {event.url} failed for too long and was disabled.",
                webhook_id=_id("Webhook", event.webhook_id),
            )
        if isinstance(event, JobStatusChanged):
            return cls(
                cursor=cursor,
                type=UserEventType.JOB_STATUS,
                at=event.at,
                job_id=_id("Job", event.job_id),
                file_id=None,
                path=None,
                status=event.status,
                progress=event.progress,
                message=event.message,
            )
        return cls(
            cursor=cursor,
            type=UserEventType(event.TYPE),
            at=event.at,
            job_id=_id("Job", event.job_id),
            file_id=_id("File", event.file_id),
            path=event.path,
            status=None,
            progress=None,
            message=None,
        )


def _id(type_name: str, key: uuid.UUID | None) -> strawberry.ID | None:
    return strawberry.ID(encode_id(type_name, key)) if key is not None else None


def _check_cursor(after: str | None) -> None:
    if after is not None:
        try:
            parse_cursor(after)
        except BadCursor as exc:
            raise BadUserInput(str(exc), field="after") from None


async def _check_owned(sessionmaker: SessionMaker, user_id: uuid.UUID, key: uuid.UUID) -> None:
    """``NOT_FOUND`` unless ``user_id`` owns job ``key``.

    A function of its own, so that its session (about 2 KiB once closed) is not a
    local of the subscription's generator, kept for as long as the client listens.
    """
    async with sessionmaker() as db:
        await jobs.get_owned_job(db, user_id, key)


@strawberry.type
class Subscription:
    @strawberry.subscription(
        description="A job's events after `after` (all when omitted), then live ones; "
        "completes after the final status. A pipeline's stream carries its steps' events "
        "too, each naming its `step`. `NOT_FOUND` for another user's job.",
        permission_classes=[IsAuthenticated],
    )
    async def job_events(
        self, info: Info, job_id: strawberry.ID, after: str | None = None
    ) -> AsyncGenerator[JobEvent]:
        # Locals live as long as the subscription: the user's id, not their row.
        user_id = info.context.require_principal().user.id
        key = decode_id_of("Job", job_id)
        _check_cursor(after)
        sessionmaker = info.context.sessionmaker
        await _check_owned(sessionmaker, user_id, key)

        async def final_state() -> dict[str, Any] | None:
            # The log may have lost the final event (retention, an outage):
            # the database has the final state.
            async with sessionmaker() as db:
                job = await db.get(JobRow, key)
            if job is None or not job.status.is_final:
                return None
            return JobStatusChanged.of(job, at=job.finished_at).to_data()

        entries = follow(info.context.events, job_stream(key), after, caught_up=final_state)
        with metrics.SUBSCRIPTIONS.track_inprogress():
            async for entry in entries:
                event = JobStatusChanged.from_data(entry.data)
                yield JobEvent.from_event(entry.cursor, event)
                if event.status.is_final:
                    # Delivered while the user watched: no mail about it.
                    await notifications.seen(sessionmaker, user_id, event.job_id)
                # A pipeline's stream holds its steps' final events too.
                if event.status.is_final and event.job_id == key:
                    return

    @strawberry.subscription(
        description="Your events as they happen: job status changes, files jobs created, "
        "files deleted. With `after`, the ones since that cursor first (the newest "
        "1,000 are kept).",
        permission_classes=[IsAuthenticated],
    )
    async def my_events(self, info: Info, after: str | None = None) -> AsyncGenerator[UserEvent]:
        user_id = info.context.require_principal().user.id
        _check_cursor(after)
        stream = user_stream(user_id)
        events = info.context.events
        if after is None:
            after = await events.last(stream)
        with metrics.SUBSCRIPTIONS.track_inprogress():
            async for entry in follow(events, stream, after):
                event = from_data(entry.data)
                yield UserEvent.from_event(entry.cursor, event)
                # Seen, so not mailed: one DELETE per job's final event (progress costs
                # nothing) and per disabled webhook.
                if isinstance(event, JobStatusChanged) and event.status.is_final:
                    await notifications.seen(info.context.sessionmaker, user_id, event.job_id)
                elif isinstance(event, WebhookDisabled):
                    await notifications.seen(info.context.sessionmaker, user_id, event.webhook_id)
