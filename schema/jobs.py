"""Jobs in GraphQL: starting, finding, cancelling and retrying work on files.

``startJob`` commits the job row first and only then hands its id to the
broker: the database is the truth, and a message that never reaches the
broker is sent again by maintenance. A job is its owner's alone; to anyone
else it does not exist (``NOT_FOUND``). The ``Job`` type itself is in
``schema.nodes``.
"""

from __future__ import annotations

import strawberry
import structlog

from core import jobs, models
from core.db import retry_busy
from core.errors import Conflict, Unavailable
from core.events import JobStatusChanged, announce
from core.ratelimit import Action
from core.tracing import current_traceparent
from core.users import require_verified
from schema.context import Info
from schema.filters import JobFilter
from schema.ids import decode_id_of
from schema.job_inputs import JobInput, given, job_request
from schema.nodes import Job, list_jobs
from schema.pagination import Connection
from schema.permissions import IsAuthenticated, owned
from schema.pipelines import cancel_pipeline, retry_pipeline, start_pipeline, step_ended
from schema.ratelimits import count
from workers.params import dump, load
from workers.registry import KINDS

logger = structlog.get_logger("depot.jobs")


@strawberry.type
class JobQuery:
    @strawberry.field(
        description="One of your jobs; `NOT_FOUND` for any other id.",
        permission_classes=[IsAuthenticated],
    )
    async def job(self, info: Info, id: strawberry.ID) -> Job:
        key = decode_id_of("Job", id)
        return Job.from_model(await owned(info.context.loaders.jobs, info.context.user, key))

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


async def _mark_sent(info: Info, job: models.Job, *, sent: bool) -> None:
    """Record whether the broker has the job's message. Best effort: the job is
    committed and its message sent or not; maintenance sends a queued job that
    looks unsent, and a redelivered message is harmless."""

    async def mark() -> None:
        async with info.context.db() as db:
            await jobs.mark_sent(db, [job.id], sent=sent)

    try:
        await retry_busy(mark, what="mark_sent")
    except Unavailable:
        logger.warning("job's sending not recorded", job_id=str(job.id), sent=sent)


@strawberry.type
class JobMutation:
    @strawberry.mutation(
        description="Start a job; it is returned at once, queued. The same "
        "`idempotencyKey` from you returns the job it first started. A `pipeline` (or a "
        "`template`'s) is checked first, then starts as one job of kind `PIPELINE`.",
        permission_classes=[IsAuthenticated],
    )
    async def start_job(
        self, info: Info, input: JobInput, idempotency_key: str | None = None
    ) -> Job:
        user = info.context.require_principal().user
        require_verified(info.context.settings, user)
        await count(info.context, Action.JOB)
        if given(input.pipeline) or given(input.template):
            return Job.from_model(await start_pipeline(info, input, idempotency_key))
        kind, requested = job_request(input)
        settings = info.context.settings
        checked = kind.check(requested, settings)
        params = dump(checked)

        async def create() -> tuple[models.Job, bool]:
            async with info.context.db() as db:
                return await jobs.create_job(
                    db,
                    user.id,
                    kind.name,
                    params,
                    kind.inputs(params),
                    max_attempts=kind.max_attempts,
                    idempotency_key=idempotency_key,
                    traceparent=current_traceparent(),
                    check_file=lambda file: kind.check_file(checked, file, settings),
                )

        job, created = await retry_busy(create, what="startJob")
        # The row says "sent" from the start (one write less); if the send
        # fails, it says "unsent" again so that maintenance sends it soon.
        if created and not await _send(info, job):
            await _mark_sent(info, job, sent=False)
        return Job.from_model(job)

    @strawberry.mutation(
        description="Cancel a job: a queued one never starts, a running one stops at its "
        "next step and its partial outputs are removed. `CONFLICT` once it succeeded "
        "or failed.",
        permission_classes=[IsAuthenticated],
    )
    async def cancel_job(self, info: Info, id: strawberry.ID) -> Job:
        user = info.context.require_principal().user
        key = decode_id_of("Job", id)
        async with info.context.db() as db:
            found = await jobs.get_owned_job(db, user.id, key)
        if found.kind == models.PIPELINE:
            return Job.from_model(await cancel_pipeline(info, found))

        async def cancel() -> tuple[models.Job, bool]:
            async with info.context.db() as db:
                return await jobs.cancel_job(db, user.id, key)

        job, cancelled = await retry_busy(cancel, what="cancelJob")
        if cancelled:
            await announce(
                info.context.events,
                JobStatusChanged.of(job),
                owner_id=job.owner_id,
                retention_seconds=info.context.settings.job_events_retention_seconds,
            )
            await step_ended(info, job)
        return Job.from_model(job)

    @strawberry.mutation(
        description="Start a failed or cancelled job again, as a new attempt. Its inputs "
        "are checked again as `startJob` checks them (`BAD_USER_INPUT` for one now beyond a "
        "limit, `CONFLICT` for one in the trash).",
        permission_classes=[IsAuthenticated],
    )
    async def retry_job(self, info: Info, id: strawberry.ID) -> Job:
        user = info.context.require_principal().user
        require_verified(info.context.settings, user)
        await count(info.context, Action.JOB)
        key = decode_id_of("Job", id)
        async with info.context.db() as db:
            found = await jobs.get_owned_job(db, user.id, key)
        if found.kind == models.PIPELINE:
            return Job.from_model(await retry_pipeline(info, found))
        if found.pipeline_id is not None:
            raise Conflict("This job is a pipeline's step: retry the pipeline instead.")
        kind, settings = KINDS[found.kind], info.context.settings
        checked = load(kind.params, found.params)

        async def again() -> models.Job:
            async with info.context.db() as db:
                return await jobs.retry_job(
                    db,
                    user.id,
                    key,
                    max_attempts=kind.max_attempts,
                    traceparent=current_traceparent(),
                    check_file=lambda file: kind.check_file(checked, file, settings),
                )

        job = await retry_busy(again, what="retryJob")
        await announce(
            info.context.events,
            JobStatusChanged.of(job),
            owner_id=job.owner_id,
            retention_seconds=info.context.settings.job_events_retention_seconds,
        )
        if await _send(info, job):
            await _mark_sent(info, job, sent=True)
        return Job.from_model(job)
