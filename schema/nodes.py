"""The node types — ``File``, ``Job``, ``User`` — and the fields that lead from one to another.

They refer to each other (a file's owner and jobs, a job's inputs, outputs and
owner, a user's files and jobs), so they live in one module that the query
and mutation modules import; nothing here imports those. Every hop goes
through the operation's dataloaders, so a page of nodes costs the same number
of queries whatever its length. Each node keeps its row's primary key as
``key`` (``Node``), next to the global ``id`` clients see.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, Self, TypeVar, cast

import strawberry
from sqlmodel import col
from strawberry.dataloader import DataLoader
from strawberry.scalars import JSON

from core import models, pipelines
from core.downloads import credential_of
from core.errors import BadUserInput, Forbidden, NotFound
from core.time import utcnow
from core.tracing import trace_id_of
from schema.context import Info
from schema.enums import JobKind, JobStatus, Role, StepStatus
from schema.filters import (
    FileFilter,
    FileOrder,
    JobFilter,
    file_conditions,
    file_ordering,
    job_conditions,
)
from schema.ids import encode_id
from schema.job_inputs import graphql_enum
from schema.loaders import Loaders
from schema.node import Node
from schema.pagination import Connection, paginate, paginate_children
from schema.scalars import BigInt
from workers.images import ImageFormat
from workers.variants import ImageFit, VariantSpec
from workers.visuals import is_visual_document

# The same GraphQL enums as the job inputs' (one definition per Python enum).
graphql_enum(ImageFormat)
graphql_enum(ImageFit)

T = TypeVar("T")

# -- users -------------------------------------------------------------------------


@strawberry.type
class Usage:
    # Read from the user's row when asked, not from the signed-in user's: that may
    # come from the sign-in cache (core.signins), a few seconds old, and uploads and
    # jobs change the count all the time. Both fields share one loaded row.
    owner_id: strawberry.Private[uuid.UUID]

    @strawberry.field(description="Bytes held by your files (trash included) and open uploads.")
    async def used_bytes(self, info: Info) -> BigInt:
        user = await info.context.loaders.users.load(self.owner_id)
        return BigInt(user.used_bytes if user is not None else 0)

    @strawberry.field
    async def quota_bytes(self, info: Info) -> BigInt:
        user = await info.context.loaders.users.load(self.owner_id)
        return BigInt(user.quota_bytes if user is not None else 0)

    @strawberry.field(
        description="How many live files you have; files in the trash are not counted "
        "(their bytes still are, in usedBytes, until they are purged)."
    )
    async def file_count(self, info: Info) -> int:
        return await info.context.loaders.live_file_counts.load(self.owner_id)


@strawberry.type(description="Which news reaches you by mail when no open tab of yours saw it.")
class NotificationPreferences:
    job_succeeded: bool = strawberry.field(description="A job of yours finished.")
    job_failed: bool = strawberry.field(description="A job of yours failed.")
    storage_nearly_full: bool = strawberry.field(description="Your storage is 90 % full.")
    webhook_disabled: bool = strawberry.field(
        description="A webhook of yours was switched off after failing."
    )

    @classmethod
    def from_model(cls, user: models.User) -> Self:
        return cls(
            job_succeeded=user.mail_job_succeeded,
            job_failed=user.mail_job_failed,
            storage_nearly_full=user.mail_storage_full,
            webhook_disabled=user.mail_webhook_disabled,
        )


@strawberry.type
class User(Node):
    """A Depot account, visible to itself and to admins."""

    email: str
    display_name: str
    role: Role
    is_active: bool
    created_at: datetime
    usage: Usage
    email_verified: bool = strawberry.field(
        description="Whether the owner followed a verification link sent to `email`."
    )
    notification_preferences: NotificationPreferences

    @classmethod
    def from_model(cls, user: models.User) -> Self:
        return cls(
            id=strawberry.ID(encode_id("User", user.id)),
            key=user.id,
            email=user.email,
            display_name=user.display_name,
            role=user.role,
            is_active=user.is_active,
            created_at=user.created_at,
            usage=Usage(owner_id=user.id),
            email_verified=user.email_verified_at is not None,
            notification_preferences=NotificationPreferences.from_model(user),
        )

    @strawberry.field(
        description="Your files, as the top-level `files` lists them. Files are visible "
        "to their owner only: an admin asking for another user's gets `FORBIDDEN`."
    )
    async def files(
        self,
        info: Info,
        first: int | None = None,
        after: str | None = None,
        filter: FileFilter | None = None,
        order_by: FileOrder | None = None,
    ) -> Connection[File]:
        # Owner only, as everywhere for files; it also keeps this one listing per
        # operation, where a list of users would cost one query per user.
        if info.context.require_principal().user.id != self.key:
            raise Forbidden("Files are visible to their owner only.")
        return await list_files(
            info, self.key, first=first, after=after, filter=filter, order_by=order_by
        )

    @strawberry.field(
        description="Your jobs, as the top-level `jobs` lists them; owner only, like `files`."
    )
    async def jobs(
        self,
        info: Info,
        first: int | None = None,
        after: str | None = None,
        filter: JobFilter | None = None,
    ) -> Connection[Job]:
        if info.context.require_principal().user.id != self.key:
            raise Forbidden("Jobs are visible to their owner only.")
        return await list_jobs(info, self.key, first=first, after=after, filter=filter)


def later(result: Awaitable[T]) -> T:
    """What a synchronous resolver returns when it has to wait after all.

    graphql-core awaits whatever a resolver returns that is awaitable, so a
    resolver that usually has its answer at hand (a page's owner, a file's
    missing job) stays synchronous, and only the fields that do wait cost a
    coroutine. The type is the awaited one, which is what the schema shows.
    """
    return cast(T, result)


async def _owner(info: Info, owner_id: uuid.UUID) -> User:
    owner = await info.context.loaders.users.load(owner_id)
    if owner is None:  # owners' files and jobs go with them (ON DELETE CASCADE)
        raise NotFound("No such user.")
    return User.from_model(owner)


def _load_owner(info: Info, owner_id: uuid.UUID) -> User:
    return later(_owner(info, owner_id))


def _own_node(info: Info, owner_id: uuid.UUID) -> User | None:
    """The signed-in caller as the owner of a page of their rows, read at sign-in like ``me``.

    One node for the whole page, so ``owner`` costs no query and no resolver
    work per row. None when the rows are someone else's, and in a mutation,
    which may have changed the caller since sign-in: there the loader reads
    the row as it is now.
    """
    user = info.context.user
    if user is None or user.id != owner_id or info.context.db.writes:
        return None
    return User.from_model(user)


# -- files -------------------------------------------------------------------------


@strawberry.type
class File(Node):
    """A file owned by one user; to anyone else it does not exist."""

    path: str
    name: str
    size: BigInt
    content_type: str
    sha256: str
    metadata: JSON
    created_at: datetime
    updated_at: datetime
    trashed_at: datetime | None
    owner_id: strawberry.Private[uuid.UUID]
    storage_key: strawberry.Private[str]
    produced_by_job_id: strawberry.Private[uuid.UUID | None]
    derived_from_id: strawberry.Private[uuid.UUID | None]
    # The owner when the one who listed the file already had it (see `owner`).
    owner_node: strawberry.Private[User | None] = None

    @classmethod
    def from_model(cls, file: models.File, owner: User | None = None) -> Self:
        return cls(
            id=strawberry.ID(encode_id("File", file.id)),
            key=file.id,
            path=file.path,
            name=file.name,
            size=BigInt(file.size),
            content_type=file.content_type,
            sha256=file.sha256,
            metadata=JSON(file.meta),
            created_at=file.created_at,
            updated_at=file.updated_at,
            trashed_at=file.trashed_at,
            owner_id=file.owner_id,
            storage_key=file.storage_key,
            produced_by_job_id=file.produced_by_job_id,
            derived_from_id=file.derived_from_id,
            owner_node=owner,
        )

    @strawberry.field(
        description="A link that downloads the bytes until it expires "
        "(`DEPOT_DOWNLOAD_URL_MINUTES`); ask again for a fresh one."
    )
    def download_url(self, info: Info) -> str:
        # Depot's own link on every backend, bound to the caller's credential:
        # the download route checks the file and the credential on each request.
        context = info.context
        return context.links.download(
            self.storage_key,
            filename=self.name,
            content_type=self.content_type,
            expires_at=utcnow() + timedelta(minutes=context.settings.download_url_minutes),
            credential=credential_of(context.require_principal()),
        )

    @strawberry.field(
        description="A link to this file's picture in a box of `width` x `height` pixels "
        "(give one or both; never enlarged), rendered on first use and then served from "
        "storage: an image, a PDF's first page or a video's poster frame. It expires as "
        "`downloadUrl` does. Null for a file that has no picture."
    )
    def image_url(
        self,
        info: Info,
        width: int | None = None,
        height: int | None = None,
        fit: ImageFit = ImageFit.CONTAIN,
        format: ImageFormat = ImageFormat.WEBP,
        quality: int | None = None,
    ) -> str | None:
        context = info.context
        most = context.settings.variant_max_side
        for field, side in (("width", width), ("height", height)):
            if side is not None and not 1 <= side <= most:
                raise BadUserInput(
                    f"{field} is from 1 to {most} pixels (DEPOT_VARIANT_MAX_SIDE).", field=field
                )
        if width is None and height is None:
            raise BadUserInput("Give width, height or both.", field="width")
        if quality is not None and not 1 <= quality <= 100:
            raise BadUserInput("quality is from 1 to 100.", field="quality")
        if not (self.content_type.startswith("image/") or is_visual_document(self.content_type)):
            return None
        spec = VariantSpec(width, height, fit, format, quality)
        return context.links.variant(
            self.storage_key,
            spec.claims(),
            expires_at=utcnow() + timedelta(minutes=context.settings.download_url_minutes),
            credential=credential_of(context.require_principal()),
        )

    @strawberry.field(description="The user the file belongs to.")
    def owner(self, info: Info) -> User:
        return self.owner_node or _load_owner(info, self.owner_id)

    @strawberry.field(
        description="The pipeline this upload started (`pipeline` on `uploadFile` or "
        "`createUpload`); null when it started none."
    )
    async def processing(self, info: Info) -> Job | None:
        found = await info.context.loaders.processing.load(self.key)
        return Job.from_model(found) if found is not None else None

    @strawberry.field(description="The job that made this file; null for an upload.")
    def produced_by(self, info: Info) -> Job | None:
        if self.produced_by_job_id is None:
            return None
        return later(_produced_by(info, self.produced_by_job_id))

    @strawberry.field(
        description="The file this one was made from (a thumbnail's, conversion's or "
        "transcode's source); null for an upload, or once the source is purged."
    )
    async def derived_from(self, info: Info) -> File | None:
        if self.derived_from_id is None:
            return None
        source = await info.context.loaders.files.load(self.derived_from_id)
        return File.from_model(source) if source is not None else None

    @strawberry.field(
        description="Files made from this one, oldest first. Trashing, restoring or purging "
        "this file does the same to them (`DEPOT_DERIVATIVES_FOLLOW_SOURCE`)."
    )
    async def derivatives(
        self, info: Info, first: int | None = None, after: str | None = None
    ) -> Connection[File]:
        loader = info.context.loaders.paged("derivatives", first, after, _derivatives)
        page: Connection[File] = await loader.load(self.key)
        return page

    @strawberry.field(description="Jobs that read this file, oldest first.")
    async def jobs(
        self, info: Info, first: int | None = None, after: str | None = None
    ) -> Connection[Job]:
        loader = info.context.loaders.paged("file_jobs", first, after, _file_jobs)
        page: Connection[Job] = await loader.load(self.key)
        return page


async def list_files(
    info: Info,
    owner_id: uuid.UUID,
    *,
    first: int | None,
    after: str | None,
    filter: FileFilter | None,
    order_by: FileOrder | None,
) -> Connection[File]:
    """One page of ``owner_id``'s files: the same listing for ``files`` and ``User.files``."""
    conditions = file_conditions(owner_id, filter)
    owner = _own_node(info, owner_id)
    async with info.context.db() as db:
        return await paginate(
            db,
            models.File,
            conditions,
            first=first,
            after=after,
            to_node=lambda row: File.from_model(row, owner),
            ordering=file_ordering(order_by),
            # File.from_model only reads the row.
            plain_rows=True,
        )


async def _produced_by(info: Info, job_id: uuid.UUID) -> Job | None:
    job = await info.context.loaders.jobs.load(job_id)
    return Job.from_model(job) if job is not None else None


def _file_jobs(
    loaders: Loaders, first: int | None, after: str | None
) -> DataLoader[uuid.UUID, Connection[Job]]:
    """Jobs that read each file, a page per file, for ``File.jobs``."""

    async def load(file_ids: list[uuid.UUID]) -> list[Connection[Job]]:
        async with loaders.shared() as db:
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


# -- jobs --------------------------------------------------------------------------


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
    trace_id: str | None = strawberry.field(
        description="The OpenTelemetry trace of the request that started (or last retried) "
        "the job, which each attempt's span continues; null when tracing is off."
    )
    step: str | None = strawberry.field(description="A pipeline step's job: the step's name.")
    owner_id: strawberry.Private[uuid.UUID]
    pipeline_key: strawberry.Private[uuid.UUID | None] = None
    row: strawberry.Private[models.Job | None] = None
    # As File's: the owner when the one who listed the job already had it.
    owner_node: strawberry.Private[User | None] = None

    @classmethod
    def from_model(cls, job: models.Job, owner: User | None = None) -> Self:
        return cls(
            id=strawberry.ID(encode_id("Job", job.id)),
            key=job.id,
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
            trace_id=trace_id_of(job.traceparent),
            step=job.step,
            owner_id=job.owner_id,
            pipeline_key=job.pipeline_id,
            row=job,
            owner_node=owner,
        )

    @strawberry.field(
        description="A pipeline's steps, in an order where each follows what "
        "it uses; null for any other job."
    )
    async def steps(self, info: Info) -> list[PipelineStep] | None:
        if self.row is None or self.row.kind != models.PIPELINE:
            return None
        children = await info.context.loaders.step_jobs.load(self.key)
        return [
            PipelineStep(
                name=state.step.name,
                kind=JobKind(state.step.kind),
                use=state.step.use,
                status=state.status,
                progress=state.progress,
                job_row=state.job,
            )
            for state in pipelines.states(self.row, children)
        ]

    @strawberry.field(description="A step's job: the pipeline it is a step of.")
    async def pipeline(self, info: Info) -> Job | None:
        if self.pipeline_key is None:
            return None
        found = await info.context.loaders.jobs.load(self.pipeline_key)
        return Job.from_model(found) if found is not None else None

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
    def owner(self, info: Info) -> User:
        return self.owner_node or _load_owner(info, self.owner_id)


@strawberry.type(description="One step of a pipeline: what it runs, what it uses, where it is.")
class PipelineStep:
    name: str
    kind: JobKind
    use: list[str] = strawberry.field(
        description="The steps whose files it reads; `:input` is the pipeline's own."
    )
    status: StepStatus
    progress: float = strawberry.field(description="From 0 to 1.")
    job_row: strawberry.Private[models.Job | None]

    @strawberry.field(
        description="The step's job, once it started; null while pending or when skipped."
    )
    def job(self) -> Job | None:
        return Job.from_model(self.job_row) if self.job_row is not None else None


async def list_jobs(
    info: Info,
    owner_id: uuid.UUID,
    *,
    first: int | None,
    after: str | None,
    filter: JobFilter | None,
) -> Connection[Job]:
    """One page of ``owner_id``'s jobs: the same listing for ``jobs`` and ``User.jobs``."""
    owner = _own_node(info, owner_id)
    async with info.context.db() as db:
        return await paginate(
            db,
            models.Job,
            job_conditions(owner_id, filter),
            first=first,
            after=after,
            to_node=lambda row: Job.from_model(row, owner),
        )


def _files_under(parent: Any) -> Callable[[Loaders, int | None, str | None], FilePages]:
    """A page of files per parent, for a connection of files whose ``parent`` column
    names that parent (``Job.outputs``, ``File.derivatives``)."""

    def loader(loaders: Loaders, first: int | None, after: str | None) -> FilePages:
        async def load(parent_ids: list[uuid.UUID]) -> list[Connection[File]]:
            async with loaders.shared() as db:
                pages = await paginate_children(
                    db,
                    models.File,
                    parent,
                    parent_ids,
                    first=first,
                    after=after,
                    to_node=File.from_model,
                )
            return [pages[parent_id] for parent_id in parent_ids]

        return DataLoader(load_fn=load)

    return loader


FilePages = DataLoader[uuid.UUID, Connection[File]]
# Files each job made; files made from each file.
_job_outputs = _files_under(col(models.File.produced_by_job_id))
_derivatives = _files_under(col(models.File.derived_from_id))
