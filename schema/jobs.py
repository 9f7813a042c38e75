"""Jobs in GraphQL: starting, finding, cancelling and retrying work on files.

``startJob`` commits the job row first and only then hands its id to the
broker: the database is the truth, and a message that never reaches the
broker is sent again by maintenance. A job is its owner's alone; to anyone
else it does not exist (``NOT_FOUND``).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Self

import strawberry
import structlog
from sqlalchemy import ColumnElement
from sqlmodel import col
from strawberry.dataloader import DataLoader
from strawberry.scalars import JSON

from core import jobs, models
from core.errors import NotFound
from schema.context import Info
from schema.enums import JobKind, JobStatus
from schema.files import File
from schema.ids import decode_id_of, encode_id
from schema.job_inputs import JobInput, job_request
from schema.loaders import Loaders
from schema.node import Node
from schema.pagination import Connection, paginate, paginate_children
from schema.permissions import IsAuthenticated
from workers.params import dump
from workers.registry import KINDS

if TYPE_CHECKING:
    from schema.users import User

logger = structlog.get_logger("depot.jobs")


@strawberry.type(description="Work on your files, done by a worker; watch it with `jobEvents`.")
class Job(Node):
    kind: JobKind
    status: JobStatus
    progress: float = strawberry.field(description="From 0 to 1.")
    message: str | None = strawberry.field(description="What the job is doing or did.")
    error: str | None = strawberry.field(description="Why the job failed.")
    attempts: int = strawberry.field(description="Attempts started so far.")
    params: JSON = strawberry.field(description="The parameters the job was started with.")
    created_at: datetime
    started_at: datetime | None = strawberry.field(description="When the last attempt started.")
    finished_at: datetime | None
    owner_id: strawberry.Private[uuid.UUID]
    key: strawberry.Private[uuid.UUID]

    @classmethod
    def from_model(cls, job: models.Job) -> Self:
        return cls(
            id=strawberry.ID(encode_id("Job", job.id)),
            kind=JobKind(job.kind),
            status=job.status,
            progress=job.progress,
            message=job.message,
            error=job.error,
            attempts=job.attempts,
            params=JSON(job.params),
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            owner_id=job.owner_id,
            key=job.id,
        )

    @strawberry.field(description="The files the job reads, in the order given.")
    async def inputs(self, info: Info) -> list[File]:
        found = await info.context.loaders.job_inputs.load(self.key)
        return [File.from_model(file) for file in found]

    @strawberry.field(description="The files the job made (kept only if it succeeds).")
    async def outputs(
        self, info: Info, first: int | None = None, after: str | None = None
    ) -> Connection[File]:
        loader = info.context.loaders.paged("job_outputs", first, after, _job_outputs)
        page: Connection[File] = await loader.load(self.key)
        return page

    @strawberry.field(description="The user the job belongs to.")
    async def owner(self, info: Info) -> Annotated[User, strawberry.lazy("schema.users")]:
        from schema.users import User

        owner = await info.context.loaders.users.load(self.owner_id)
        if owner is None:
            raise NotFound("No such user.")
        return User.from_model(owner)


def _job_outputs(
    loaders: Loaders, first: int | None, after: str | None
) -> DataLoader[uuid.UUID, Connection[File]]:
    async def load(job_ids: list[uuid.UUID]) -> list[Connection[File]]:
        async with loaders.sessionmaker() as db:
            pages = await paginate_children(
                db,
                models.File,
                col(models.File.produced_by_job_id),
                job_ids,
                first=first,
                after=after,
                to_node=File.from_model,
            )
        return [pages[job_id] for job_id in job_ids]

    return DataLoader(load_fn=load)


def file_jobs(
    loaders: Loaders, first: int | None, after: str | None
) -> DataLoader[uuid.UUID, Connection[Job]]:
    """Jobs that read each file, a page per file, for ``File.jobs``."""

    async def load(file_ids: list[uuid.UUID]) -> list[Connection[Job]]:
        async with loaders.sessionmaker() as db:
            pages = await paginate_children(
                db,
                models.Job,
                col(models.JobInput.file_id),
                file_ids,
                join=(models.JobInput, col(models.JobInput.job_id) == col(models.Job.id)),
                first=first,
                after=after,
                to_node=Job.from_model,
            )
        return [pages[file_id] for file_id in file_ids]

    return DataLoader(load_fn=load)


# -- queries -----------------------------------------------------------------------


@strawberry.input(description="Which jobs to list; every condition given must hold.")
class JobFilter:
    status: JobStatus | None = None
    kind: JobKind | None = None


def job_conditions(owner_id: uuid.UUID, filter: JobFilter | None) -> list[ColumnElement[bool]]:
    conditions = [col(models.Job.owner_id) == owner_id]
    if filter is not None and filter.status is not None:
        conditions.append(col(models.Job.status) == filter.status)
    if filter is not None and filter.kind is not None:
        conditions.append(col(models.Job.kind) == filter.kind.value)
    return conditions


async def list_jobs(
    info: Info,
    owner_id: uuid.UUID,
    *,
    first: int | None,
    after: str | None,
    filter: JobFilter | None,
) -> Connection[Job]:
    async with info.context.sessionmaker() as db:
        return await paginate(
            db,
            models.Job,
            job_conditions(owner_id, filter),
            first=first,
            after=after,
            to_node=Job.from_model,
        )


async def resolve_job(info: Info, key: uuid.UUID) -> Job | None:
    """A job is visible to its owner only (``node(id:)``); None otherwise."""
    viewer = info.context.user
    if viewer is None:
        return None
    job = await info.context.loaders.jobs.load(key)
    if job is None or job.owner_id != viewer.id:
        return None
    return Job.from_model(job)


@strawberry.type
class JobQuery:
    @strawberry.field(
        description="One of your jobs; `NOT_FOUND` for any other id.",
        permission_classes=[IsAuthenticated],
    )
    async def job(self, info: Info, id: strawberry.ID) -> Job:
        found = await resolve_job(info, decode_id_of("Job", id))
        if found is None:
            raise NotFound("No such job.")
        return found

    @strawberry.field(description="Your jobs, oldest first.", permission_classes=[IsAuthenticated])
    async def jobs(
        self,
        info: Info,
        first: int | None = None,
        after: str | None = None,
        filter: JobFilter | None = None,
    ) -> Connection[Job]:
        user = info.context.require_principal().user
        return await list_jobs(info, user.id, first=first, after=after, filter=filter)


# -- changes -----------------------------------------------------------------------


async def _send(info: Info, job: models.Job) -> bool:
    """Hand a committed job to the broker; if that fails, maintenance sends it later."""
    try:
        await info.context.jobs.send(job.id, job.kind)
    except Exception as exc:  # noqa: BLE001 - the job is safe in the database either way
        logger.warning("job not handed to the broker yet", job_id=str(job.id), error=str(exc))
        return False
    return True


@strawberry.type
class JobMutation:
    @strawberry.mutation(
        description="Start a job; it is returned at once, queued. The same "
        "`idempotencyKey` from you returns the job it first started.",
        permission_classes=[IsAuthenticated],
    )
    async def start_job(
        self, info: Info, input: JobInput, idempotency_key: str | None = None
    ) -> Job:
        user = info.context.require_principal().user
        kind, requested = job_request(input)
        params = dump(kind.check(requested, info.context.settings))
        async with info.context.sessionmaker() as db:
            job, created = await jobs.create_job(
                db,
                user.id,
                kind.name,
                params,
                kind.inputs(params),
                max_attempts=kind.max_attempts,
                idempotency_key=idempotency_key,
            )
        # The row says "sent" from the start (one write less); if the send
        # fails, it says "unsent" again so that maintenance sends it soon.
        if created and not await _send(info, job):
            async with info.context.sessionmaker() as db:
                await jobs.mark_sent(db, [job.id], sent=False)
        return Job.from_model(job)

    @strawberry.mutation(
        description="Cancel a job: a queued one never starts, a running one stops at its "
        "next step and its partial outputs are removed. `CONFLICT` once it succeeded "
        "or failed.",
        permission_classes=[IsAuthenticated],
    )
    async def cancel_job(self, info: Info, id: strawberry.ID) -> Job:
        user = info.context.require_principal().user
        async with info.context.sessionmaker() as db:
            job, cancelled = await jobs.cancel_job(db, user.id, decode_id_of("Job", id))
        if cancelled:
            await jobs.publish_status(
                info.context.events,
                job,
                retention_seconds=info.context.settings.job_events_retention_seconds,
            )
        return Job.from_model(job)

    @strawberry.mutation(
        description="Start a failed or cancelled job again, as a new attempt.",
        permission_classes=[IsAuthenticated],
    )
    async def retry_job(self, info: Info, id: strawberry.ID) -> Job:
        user = info.context.require_principal().user
        key = decode_id_of("Job", id)
        async with info.context.sessionmaker() as db:
            found = await jobs.get_owned_job(db, user.id, key)
            job = await jobs.retry_job(
                db, user.id, key, max_attempts=KINDS[found.kind].max_attempts
            )
        await jobs.publish_status(
            info.context.events,
            job,
            retention_seconds=info.context.settings.job_events_retention_seconds,
        )
        if await _send(info, job):
            async with info.context.sessionmaker() as db:
                await jobs.mark_sent(db, [job.id])
        return Job.from_model(job)
