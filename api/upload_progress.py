"""An upload's bytes arriving, told on the stream of the pipeline waiting for it.

A tus ``PATCH`` and a direct upload's ``PUT`` pass their bytes through
:meth:`UploadProgress.through`, which announces the bytes received so far
(``core.pipelines.upload_progress``, a ``JobProgressed`` on the pipeline's
stream only) at most once per :data:`PROGRESS_SECONDS`, and once more when
the request's bytes end. Cost per chunk: one addition and one clock read;
per event, one append to the job's stream (an ``XADD`` with Redis, in the
request's own task, so a slow bus slows the upload by one round trip per
event, never more than :data:`PROGRESS_SECONDS` apart). An upload with a
pipeline costs one primary-key read of it per request; one without pays
nothing (the upload row the request reads anyway names none).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Final

from core import pipelines
from core.db import SessionMaker
from core.eventlog import EventLog
from core.events import announce
from core.models import Job, JobStatus

PROGRESS_SECONDS: Final = 0.25
"""Shortest time between two progress events of one request: 4 a second, enough for
a progress bar, and no more appends per second however small the chunks."""


async def waiting_pipeline(sessionmaker: SessionMaker, pipeline_id: uuid.UUID | None) -> Job | None:
    """The pipeline still waiting for the upload, to tell of its bytes; None otherwise
    (no pipeline, or one cancelled meanwhile: nobody is told of bytes then)."""
    if pipeline_id is None:
        return None
    async with sessionmaker() as db:
        job = await db.get(Job, pipeline_id)
    if job is None or not job.awaiting_upload or job.status is not JobStatus.QUEUED:
        return None
    return job


class UploadProgress:
    """Tells ``pipeline``'s stream how many of ``total`` bytes arrived, throttled."""

    def __init__(
        self,
        events: EventLog,
        pipeline: Job,
        received: int,
        total: int,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.events = events
        self.pipeline = pipeline
        self.received = received
        self.total = total
        self._clock = clock
        self._told = clock()

    async def through(self, chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
        """``chunks`` as they come, announcing the bytes at most every PROGRESS_SECONDS."""
        async for chunk in chunks:
            self.received += len(chunk)
            if self._clock() - self._told >= PROGRESS_SECONDS:
                await self.tell()
            yield chunk

    async def tell(self, received: int | None = None) -> None:
        """Announce the bytes received now (or ``received``: where the upload stands)."""
        if received is not None:
            self.received = received
        self._told = self._clock()
        event = pipelines.upload_progress(self.pipeline, self.received, self.total)
        await announce(self.events, event, owner_id=self.pipeline.owner_id)
