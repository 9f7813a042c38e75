"""What a running job sees: its parameters, its input files, progress, its outputs.

A kind's ``run`` gets a :class:`JobContext` and nothing else. It reports
``await ctx.progress(fraction, message)`` as it goes; that is also where a
cancelled job stops (:class:`JobCancelled`). Progress events are coalesced to
at most one per ``EVENT_INTERVAL`` per job, the last one always sent; a
heartbeat records progress in the database and learns of cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path
from typing import Any, Final

import anyio
import structlog

from core import jobs, quota
from core.errors import BadUserInput, QuotaExceeded
from core.events import JobProgressed, announce
from core.files import path_taken
from core.models import File, Job
from core.uploads import stage_output
from storage.errors import ObjectNotFound
from storage.local import LocalStorage
from workers.errors import JobCancelled, JobFailed, JobInterrupted
from workers.resources import Resources
from workers.scratch import scratch_directory

EVENT_INTERVAL: Final = 0.1
SPOOL_CHUNK: Final = 1024 * 1024
# A job's outputs are held to its owner's free quota each time they pass this many more
# bytes (one SELECT; none for a job whose outputs are smaller, a thumbnail's).
QUOTA_CHECK_BYTES: Final = 8 * 1024 * 1024

logger = structlog.get_logger("depot.jobs")


class JobContext:
    """One attempt of one job, as its kind's ``run`` sees it."""

    def __init__(
        self,
        job: Job,
        resources: Resources,
        *,
        input_count: int,
        inputs: list[File | None] | None = None,
    ) -> None:
        self.job = job
        self._input_count = input_count
        # Read by the claim, in its transaction (core.jobs.claim); else read when asked.
        self._inputs = inputs
        # What the attempt learnt about files, written with its final status.
        self.file_meta: dict[uuid.UUID, dict[str, Any]] = {}
        self.params: dict[str, Any] = job.params
        self.settings = resources.settings
        self.storage = resources.storage
        self.sessionmaker = resources.sessionmaker
        self.events = resources.events
        # Stored, their rows not yet written (``create_output``).
        self.outputs: list[File] = []
        # The outputs' bytes so far, and how many there were when the quota was last read.
        self._output_bytes = 0
        self._quota_checked_at = 0
        self._output_paths: set[str] = set()
        self._cancelled = False
        # Set from another thread by ``interrupt`` (the worker is stopping).
        self._interrupted = False
        self._last_event = 0.0
        self._flush: asyncio.TimerHandle | None = None
        self._flushing: asyncio.Task[None] | None = None

    # ------------------------------------------------------------- progress

    def check_cancelled(self) -> None:
        if self._cancelled:
            raise JobCancelled()
        if self._interrupted:
            raise JobInterrupted()

    def interrupt(self) -> None:
        """Stop at the next progress point, to run again elsewhere (the worker is stopping)."""
        self._interrupted = True

    async def progress(self, fraction: float, message: str | None = None) -> None:
        """Report how far the job got (0..1); stops here if it was cancelled."""
        self.check_cancelled()
        self.job.progress = min(max(float(fraction), 0.0), 1.0)
        self.job.message = message[:500] if message is not None else None
        now = time.monotonic()
        if self._flush is not None:
            return  # an event is due soon; it will carry this value
        if now - self._last_event >= EVENT_INTERVAL:
            self._last_event = now
            await self._emit()
        else:
            # Coalesced: the latest value goes out when the interval is up.
            loop = asyncio.get_running_loop()
            self._flush = loop.call_at(
                loop.time() + self._last_event + EVENT_INTERVAL - now, self._flush_now
            )

    def _flush_now(self) -> None:
        self._flush = None
        self._last_event = time.monotonic()
        self._flushing = asyncio.create_task(self._emit())

    def _cancel_flush(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None

    async def _emit(self) -> None:
        await announce(self.events, JobProgressed.of(self.job), owner_id=self.job.owner_id)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Heartbeats while the body runs; no progress event outlives it."""
        beating = asyncio.create_task(self._beat_forever())
        try:
            yield
        finally:
            beating.cancel()
            self._cancel_flush()
            if self._flushing is not None:
                self._flushing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beating

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.job_heartbeat_seconds)
            try:
                async with self.sessionmaker() as db:
                    if await jobs.beat(db, self.job.id, self.job.progress, self.job.message):
                        self._cancelled = True
            except Exception as exc:  # noqa: BLE001 - the next beat tries again
                logger.warning("heartbeat failed", job_id=str(self.job.id), error=str(exc))

    # ------------------------------------------------------------- files

    async def inputs(self) -> list[File]:
        """The job's input files, in the order given; ``JobFailed`` if one is gone.

        As the attempt's claim found them (a file trashed since then is still
        read: it was live when the attempt started).
        """
        rows = self._inputs
        if rows is None:
            async with self.sessionmaker() as db:
                rows = self._inputs = await jobs.job_inputs(db, self.job.id)
        files = [file for file in rows if file is not None]
        if len(files) != self._input_count or any(file.trashed_at is not None for file in files):
            raise JobFailed("An input file was deleted or moved to the trash.")
        return files

    def set_meta(self, file: File, meta: dict[str, Any]) -> None:
        """Replace ``file``'s metadata when the attempt's outcome is recorded, in that
        transaction (:func:`core.jobs.finish`), whether the job succeeds or fails;
        an attempt sent again or taken over writes nothing."""
        self.file_meta[file.id] = meta

    async def read(
        self, file: File, start: int = 0, end: int | None = None
    ) -> AsyncIterator[bytes]:
        """The bytes of ``file`` as storage hands them over."""
        try:
            async for chunk in self.storage.open(file.storage_key, start, end):
                yield chunk
        except ObjectNotFound:
            raise JobFailed(f"The bytes of {file.path!r} are missing from storage.") from None

    @contextlib.asynccontextmanager
    async def spool(self, file: File) -> AsyncIterator[Path]:
        """A path holding ``file``'s bytes, for libraries that need to seek.

        Local storage hands over the stored file itself (read in place: no
        copy, which cost 3-15 ms of a thumbnail job); other storage copies the
        bytes to a temporary file first.
        """
        if isinstance(self.storage, LocalStorage):
            path = self.storage.local_path(file.storage_key)
            if not await anyio.Path(path).is_file():
                raise JobFailed(f"The bytes of {file.path!r} are missing from storage.")
            yield path
            return
        with scratch_directory("input") as directory:
            path = directory / "input"
            async with await anyio.open_file(path, "wb") as out:
                async for chunk in self.read(file):
                    await out.write(chunk)
            yield path

    async def create_output(
        self,
        path: str,
        chunks: AsyncIterable[bytes],
        *,
        meta: dict[str, Any] | None = None,
        derived_from: File | None = None,
    ) -> File:
        """Store ``chunks`` as a new file of the owner at ``path``, produced by this job
        (and made from the file ``derived_from``, which it then follows).

        The bytes are stored now; the file's row, and the quota its bytes
        take, are written with the job's success, in that one transaction
        (:func:`core.jobs.finish`, :func:`core.uploads.stage_output`): no
        transaction here. A bad path, one this job already made, or a file
        over ``DEPOT_MAX_UPLOAD_BYTES`` fails the job now; a path taken by
        another file fails it when it ends (kinds check paths early, before
        the work, with :func:`core.files.first_taken_path`), and so does a
        full quota, which is also read each time the job's outputs pass
        another ``QUOTA_CHECK_BYTES``: an archive over quota stops within
        that many bytes of it, not after storing all its inputs' size.
        """
        self.check_cancelled()
        try:
            file = await stage_output(
                self.storage,
                self.settings,
                self.job.owner_id,
                path,
                self._within_quota(chunks),
                produced_by=self.job.id,
                derived_from=derived_from.id if derived_from is not None else None,
                meta=meta,
            )
        except (BadUserInput, QuotaExceeded) as exc:
            raise JobFailed(exc.message) from None
        self.outputs.append(file)  # even a duplicate: its bytes go with the others'
        if file.path in self._output_paths:
            raise JobFailed(path_taken(file.path).message)
        self._output_paths.add(file.path)
        return file

    async def _within_quota(self, chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
        """``chunks``, failing the job once its outputs so far are more than its owner's
        free quota (read, not reserved: a killed worker leaves nothing reserved)."""
        async for chunk in chunks:
            self._output_bytes += len(chunk)
            if self._output_bytes - self._quota_checked_at >= QUOTA_CHECK_BYTES:
                self._quota_checked_at = self._output_bytes
                async with self.sessionmaker() as db:
                    free = await quota.free_bytes(db, self.job.owner_id)
                if self._output_bytes > free:
                    raise JobFailed(
                        f"The job's files would go over your storage quota: {free} bytes "
                        f"are free, and it had made {self._output_bytes} when it stopped."
                    )
            yield chunk
