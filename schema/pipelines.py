"""Pipelines in GraphQL: starting one (``startJob``'s ``pipeline`` and ``template``),
cancelling and retrying it, and the templates a user saves.

A pipeline is a ``Job`` of kind ``PIPELINE`` (its steps are in ``Job.steps``);
what runs it is :mod:`core.pipelines`, driven by :func:`workers.pipeline.advance`.
Steps are checked (:func:`workers.pipeline.check_steps`) before anything
runs, and a template's when it is saved.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Self

import strawberry
import structlog
from sqlalchemy.exc import IntegrityError
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession
from strawberry.scalars import JSON

from core import files, jobs, pipeline_templates, pipelines
from core.db import retry_busy
from core.errors import Unavailable
from core.events import JobStatusChanged, announce
from core.models import PIPELINE
from core.models import File as FileRow
from core.models import Job as JobRow
from core.models import PipelineTemplate as TemplateRow
from core.pipelines import News, Step
from core.tracing import current_traceparent
from schema.context import Info
from schema.ids import decode_id_of, encode_id
from schema.job_inputs import JobInput, StepInput, file_keys, given, step_requests
from schema.node import Node
from schema.pagination import Connection, paginate
from schema.permissions import IsAuthenticated
from workers.params import load
from workers.pipeline import (
    ADVANCE_TRIES,
    StepRequest,
    advance,
    check_steps,
    news,
    release,
    requests_of,
    send,
    uploaded,
)
from workers.registry import KINDS

logger = structlog.get_logger("depot.jobs")


@strawberry.type(description="Saved pipeline steps; start them with `startJob(input: {template})`.")
class PipelineTemplate(Node):
    name: str
    steps: JSON = strawberry.field(description="The checked steps, as a pipeline keeps them.")
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_model(cls, template: TemplateRow) -> Self:
        return cls(
            id=strawberry.ID(encode_id("PipelineTemplate", template.id)),
            key=template.id,
            name=template.name,
            steps=JSON(template.steps),
            created_at=template.created_at,
            updated_at=template.updated_at,
        )


async def resolve_template(info: Info, key: uuid.UUID) -> PipelineTemplate | None:
    viewer = info.context.user
    if viewer is None:
        return None
    async with info.context.db() as db:
        template = await db.get(TemplateRow, key)
    if template is None or template.owner_id != viewer.id:
        return None
    return PipelineTemplate.from_model(template)


@strawberry.input(description="A template's name and steps.")
class PipelineTemplateInput:
    name: str
    steps: list[StepInput]


@strawberry.input(description="What to change in a template; what is left out stays.")
class UpdatePipelineTemplateInput:
    name: str | None = None
    steps: list[StepInput] | None = None


def _checked(info: Info, steps: list[StepInput]) -> list[Step]:
    # Saved, a template is checked as if started on one file of any type.
    return check_steps(step_requests(steps), None, info.context.settings)


@strawberry.input(
    one_of=True,
    description="A pipeline to start on a file once its upload is complete: steps, or a "
    "saved template's.",
)
class UploadPipelineInput:
    steps: list[StepInput] | None = strawberry.UNSET
    template_id: strawberry.ID | None = strawberry.UNSET


async def upload_steps(
    info: Info, pipeline: UploadPipelineInput | None, content_type: str | None
) -> list[Step] | None:
    """An upload's pipeline, checked before any byte is stored (against the declared
    content type when there is one)."""
    if pipeline is None:
        return None
    if given(pipeline.steps):
        assert pipeline.steps is not None
        requests = step_requests(pipeline.steps)
    else:
        assert pipeline.template_id is not None
        user = info.context.require_principal().user
        key = decode_id_of("PipelineTemplate", pipeline.template_id, field="pipeline.templateId")
        async with info.context.db() as db:
            template = await pipeline_templates.get_owned(db, user.id, key)
        requests = requests_of(pipeline_templates.steps_of(template))
    inputs = [content_type] if content_type else None
    return check_steps(requests, inputs, info.context.settings)


async def upload_completed(info: Info, file: FileRow) -> None:
    """Start the pipeline a completed upload made with its file, if any (idempotent)."""
    context = info.context
    await uploaded(context.db, context.jobs.send, context.events, context.settings, file)


def upload_news(info: Info) -> News:
    """Where an upload's end tells of the pipeline it ended."""
    return news(info.context.events, info.context.settings)


async def announce_waiting(info: Info, pipeline: JobRow | None, total: int) -> None:
    """The first event of a pipeline created with its upload: no byte received yet."""
    if pipeline is not None:
        event = pipelines.upload_progress(pipeline, 0, total)
        await announce(info.context.events, event, owner_id=pipeline.owner_id)


# -- starting, cancelling, retrying --------------------------------------------------


async def _advance(info: Info, pipeline_id: uuid.UUID) -> None:
    """Advance the pipeline after a change that has committed (a cancel, a retry).

    A database that stays busy does not undo that change: the pipeline waits
    for maintenance, which advances quiet pipelines.
    """
    context = info.context
    try:
        await retry_busy(
            lambda: advance(
                context.db, context.jobs.send, context.events, context.settings, pipeline_id
            ),
            what="advance",
        )
    except Unavailable:
        logger.warning("pipeline not advanced; maintenance will", pipeline_id=str(pipeline_id))


async def start_pipeline(info: Info, input: JobInput, idempotency_key: str | None) -> JobRow:
    """Check the steps against the files, record the pipeline and start its first steps in
    one transaction; then send and announce them (:func:`workers.pipeline.release`)."""
    user = info.context.require_principal().user
    context = info.context
    given_steps: list[StepRequest] | None = None
    if given(input.pipeline):
        assert input.pipeline is not None
        keys = file_keys(input.pipeline.file_ids, "input.pipeline.fileIds")
        given_steps = step_requests(input.pipeline.steps)
    else:
        assert input.template is not None
        keys = file_keys(input.template.file_ids, "input.template.fileIds")
        template_key = decode_id_of(
            "PipelineTemplate", input.template.template_id, field="input.template.templateId"
        )

    async def once(db: AsyncSession) -> tuple[JobRow, pipelines.Advanced]:
        requests = given_steps
        if requests is None:
            template = await pipeline_templates.get_owned(db, user.id, template_key)
            requests = requests_of(pipeline_templates.steps_of(template))
        inputs = [await files.get_owned_file(db, user.id, key) for key in keys]
        steps = check_steps(requests, [f.content_type for f in inputs], context.settings)
        job, created = await jobs.create_job(
            db,
            user.id,
            PIPELINE,
            {"steps": [step.to_data() for step in steps]},
            keys,
            max_attempts=1,
            idempotency_key=idempotency_key,
            traceparent=current_traceparent(),
            start=True,
            commit=False,
        )
        # A key used before: its pipeline, advanced (idempotent: nothing starts twice).
        advanced = await (
            pipelines.start(db, job, inputs) if created else pipelines.advance(db, job.id)
        )
        await db.commit()
        return job, advanced

    async def record() -> tuple[JobRow, pipelines.Advanced]:
        for tries in range(1, ADVANCE_TRIES + 1):
            async with context.db() as db:
                try:
                    return await once(db)
                except IntegrityError:
                    # A file it was to read went meanwhile, or an advance raced this
                    # one: nothing was kept; decide again (a file gone is NOT_FOUND then).
                    await db.rollback()
                    if tries == ADVANCE_TRIES:
                        raise
        raise AssertionError("unreachable")

    job, advanced = await retry_busy(record, what="startJob")
    await release(context.db, context.jobs.send, context.events, context.settings, advanced)
    return job


async def _announce(info: Info, job: JobRow) -> None:
    await announce(
        info.context.events,
        JobStatusChanged.of(job),
        owner_id=job.owner_id,
        retention_seconds=info.context.settings.job_events_retention_seconds,
    )


async def cancel_pipeline(info: Info, pipeline: JobRow) -> JobRow:
    """Cancel its running and queued steps, skip its pending ones; it ends when they have."""
    user = info.context.require_principal().user

    async def cancel() -> list[JobRow]:
        # Each of its transactions is safe to repeat: a retry finishes what one began.
        async with info.context.db() as db:
            return await pipelines.cancel(db, user.id, pipeline)

    cancelled = await retry_busy(cancel, what="cancelJob")
    for job in cancelled:
        await _announce(info, job)
    await _advance(info, pipeline.id)
    async with info.context.db() as db:
        return await jobs.get_owned_job(db, user.id, pipeline.id)


async def retry_pipeline(info: Info, pipeline: JobRow) -> JobRow:
    """Run its failed and cancelled steps again, keeping what succeeded."""
    user = info.context.require_principal().user
    settings = info.context.settings

    def check_file(step: JobRow, file: FileRow) -> None:
        # As retryJob checks a job's inputs (workers.media_limits): limits may be lower now.
        kind = KINDS[step.kind]
        kind.check_file(load(kind.params, step.params), file, settings)

    async def again() -> tuple[JobRow, list[JobRow]]:
        async with info.context.db() as db:
            return await pipelines.retry(
                db, user.id, pipeline, traceparent=current_traceparent(), check_file=check_file
            )

    job, retried = await retry_busy(again, what="retryJob")
    await _announce(info, job)
    for step in retried:
        await _announce(info, step)
        await send(info.context.db, info.context.jobs.send, step.id, step.kind)
    await _advance(info, pipeline.id)
    async with info.context.db() as db:
        return await jobs.get_owned_job(db, user.id, pipeline.id)


async def step_ended(info: Info, job: JobRow) -> None:
    """A step's job was cancelled through the API: its pipeline may move on."""
    if job.pipeline_id is not None:
        await _advance(info, job.pipeline_id)


# -- templates ------------------------------------------------------------------------


@strawberry.type
class PipelineTemplateQuery:
    @strawberry.field(
        description="Your pipeline templates, oldest first.", permission_classes=[IsAuthenticated]
    )
    async def pipeline_templates(
        self, info: Info, first: int | None = None, after: str | None = None
    ) -> Connection[PipelineTemplate]:
        user = info.context.require_principal().user
        async with info.context.db() as db:
            return await paginate(
                db,
                TemplateRow,
                [col(TemplateRow.owner_id) == user.id],
                first=first,
                after=after,
                to_node=PipelineTemplate.from_model,
            )


@strawberry.type
class PipelineTemplateMutation:
    @strawberry.mutation(
        description="Save steps as a template, checked now as a pipeline's are. "
        "`CONFLICT` for a name you already use.",
        permission_classes=[IsAuthenticated],
    )
    async def create_pipeline_template(
        self, info: Info, input: PipelineTemplateInput
    ) -> PipelineTemplate:
        user = info.context.require_principal().user
        steps = _checked(info, input.steps)
        async with info.context.db() as db:
            template = await pipeline_templates.create(db, user.id, input.name, steps)
        return PipelineTemplate.from_model(template)

    @strawberry.mutation(
        description="Rename a template or replace its steps (checked again); pipelines "
        "it started keep the steps they started with.",
        permission_classes=[IsAuthenticated],
    )
    async def update_pipeline_template(
        self, info: Info, id: strawberry.ID, input: UpdatePipelineTemplateInput
    ) -> PipelineTemplate:
        user = info.context.require_principal().user
        key = decode_id_of("PipelineTemplate", id)
        steps = _checked(info, input.steps) if input.steps is not None else None
        async with info.context.db() as db:
            template = await pipeline_templates.update(
                db, user.id, key, name=input.name, steps=steps
            )
        return PipelineTemplate.from_model(template)

    @strawberry.mutation(
        description="Delete a template; returns its id.", permission_classes=[IsAuthenticated]
    )
    async def delete_pipeline_template(self, info: Info, id: strawberry.ID) -> strawberry.ID:
        user = info.context.require_principal().user
        async with info.context.db() as db:
            await pipeline_templates.delete(db, user.id, decode_id_of("PipelineTemplate", id))
        return id
