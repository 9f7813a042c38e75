"""Per-operation dataloaders: every to-one and to-many hop batched into one query.

Resolvers never query a related row themselves; they ``load`` it here, and all
loads of one tick become one ``IN (...)`` query. The number of SQL statements
for an operation therefore does not grow with the number of rows it returns.
Loaders cache, so they live for one operation only (``schema.operation``): a
WebSocket connection's later operations must not see earlier answers. The
rows they keep are detached from the operation's shared session, which a
mutation's rollback may roll back under them.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from sqlalchemy import func
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from strawberry.dataloader import DataLoader

from core import pipelines
from core.db import SharedSession
from core.models import File, Job, JobInput, User


class _Keyed(Protocol):
    id: uuid.UUID


Row = TypeVar("Row", bound=_Keyed)


def _detach(db: AsyncSession, rows: Iterable[object]) -> None:
    """Take cached rows out of the shared session, so that no later rollback expires them."""
    for row in rows:
        db.expunge(row)


class ByIdLoader(DataLoader[uuid.UUID, Row | None], Generic[Row]):
    """Rows of one table by primary key, None for a key with no row.

    The one loader for every to-one hop: all loads of one tick are one
    ``WHERE id IN (...)`` query. It remembers its ``model``, so a caller can
    name what was not found.
    """

    def __init__(self, shared: SharedSession, model: type[Row]) -> None:
        self.model = model

        async def load(keys: list[uuid.UUID]) -> Sequence[Row | None]:
            async with shared() as db:
                rows = await db.exec(select(model).where(col(model.id).in_(keys)))
                by_id = {row.id: row for row in rows}
                _detach(db, by_id.values())
            return [by_id.get(key) for key in keys]

        super().__init__(load_fn=load)


@dataclass
class Loaders:
    """The dataloaders of one operation, all reading through the operation's session.

    Each is made when first asked for: most operations use one or none, and
    every operation gets fresh ones (``schema.operation``), so making all five up
    front cost more than some whole requests' resolvers.
    """

    shared: SharedSession
    _paged: dict[tuple[str, int | None, str | None], DataLoader[Any, Any]] = field(
        init=False, default_factory=dict
    )

    @functools.cached_property
    def users(self) -> ByIdLoader[User]:
        return ByIdLoader(self.shared, User)

    @functools.cached_property
    def files(self) -> ByIdLoader[File]:
        return ByIdLoader(self.shared, File)

    @functools.cached_property
    def live_file_counts(self) -> DataLoader[uuid.UUID, int]:
        return DataLoader(load_fn=self._load_live_file_counts)

    @functools.cached_property
    def jobs(self) -> ByIdLoader[Job]:
        return ByIdLoader(self.shared, Job)

    @functools.cached_property
    def job_inputs(self) -> DataLoader[uuid.UUID, list[File]]:
        return DataLoader(load_fn=self._load_job_inputs)

    @functools.cached_property
    def step_jobs(self) -> DataLoader[uuid.UUID, list[Job]]:
        """A pipeline's steps' jobs, by pipeline."""
        return DataLoader(load_fn=self._load_step_jobs)

    @functools.cached_property
    def processing(self) -> DataLoader[uuid.UUID, Job | None]:
        """The pipeline an upload started, by file (``File.processing``)."""
        return DataLoader(load_fn=self._load_processing)

    def paged(
        self,
        name: str,
        first: int | None,
        after: str | None,
        build: Callable[[Loaders, int | None, str | None], DataLoader[Any, Any]],
    ) -> DataLoader[Any, Any]:
        """The loader of one page (``first``/``after``) of a to-many field, per parent.

        Parents asking for the same page share one loader, so one query.
        """
        key = (name, first, after)
        if key not in self._paged:
            self._paged[key] = build(self, first, after)
        return self._paged[key]

    async def _load_job_inputs(self, job_ids: list[uuid.UUID]) -> Sequence[list[File]]:
        async with self.shared() as db:
            rows = await db.exec(
                select(JobInput.job_id, File)
                .join(File, col(File.id) == col(JobInput.file_id))
                .where(col(JobInput.job_id).in_(job_ids))
                .order_by(col(JobInput.job_id), col(JobInput.position))
            )
            found: dict[uuid.UUID, list[File]] = {job_id: [] for job_id in job_ids}
            for job_id, file in rows:
                found[job_id].append(file)
            _detach(db, {file.id: file for files in found.values() for file in files}.values())
        return [found[job_id] for job_id in job_ids]

    async def _load_step_jobs(self, pipeline_ids: list[uuid.UUID]) -> Sequence[list[Job]]:
        async with self.shared() as db:
            children = await pipelines.children_of(db, pipeline_ids)
            _detach(db, children)
        found: dict[uuid.UUID, list[Job]] = {key: [] for key in pipeline_ids}
        for child in children:
            assert child.pipeline_id is not None
            found[child.pipeline_id].append(child)
        return [found[key] for key in pipeline_ids]

    async def _load_processing(self, file_ids: list[uuid.UUID]) -> Sequence[Job | None]:
        keys = {pipelines.upload_key(file_id): file_id for file_id in file_ids}
        async with self.shared() as db:
            rows = await db.exec(select(Job).where(col(Job.idempotency_key).in_(list(keys))))
            found = {keys[job.idempotency_key or ""]: job for job in rows}
            _detach(db, found.values())
        return [found.get(file_id) for file_id in file_ids]

    async def _load_live_file_counts(self, owner_ids: list[uuid.UUID]) -> Sequence[int]:
        async with self.shared() as db:
            rows = await db.exec(
                select(col(File.owner_id), func.count())
                .where(col(File.owner_id).in_(owner_ids), col(File.trashed_at).is_(None))
                .group_by(col(File.owner_id))
            )
            counts = {owner_id: int(count) for owner_id, count in rows}
        return [counts.get(owner_id, 0) for owner_id in owner_ids]
