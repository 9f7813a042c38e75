"""``verify``: read a file's bytes back from storage and compare their SHA-256.

A mismatch (or a wrong length) marks the file corrupt in its metadata and
fails the job saying so; a match records when the file was last verified.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import anyio
from sqlalchemy import update
from sqlmodel import col

from core.models import File, JobKind
from core.settings import Settings
from core.time import utcnow
from workers.context import JobContext
from workers.errors import JobFailed
from workers.kind import Kind
from workers.params import file_id


def check(params: dict[str, Any], settings: Settings) -> dict[str, Any]:
    return {"fileId": str(file_id(params, "fileId"))}


def inputs(params: dict[str, Any]) -> list[uuid.UUID]:
    return [uuid.UUID(params["fileId"])]


async def run(ctx: JobContext) -> None:
    [file] = await ctx.inputs()
    digest = hashlib.sha256()
    size = 0
    await ctx.progress(0.0, f"Reading {file.name}")
    async for chunk in ctx.read(file):
        # hashlib lets go of the GIL on large buffers: hash beside the event loop.
        await anyio.to_thread.run_sync(digest.update, chunk)
        size += len(chunk)
        await ctx.progress(size / file.size if file.size else 1.0, f"Reading {file.name}")
    corrupt = size != file.size or digest.hexdigest() != file.sha256
    meta = {**file.meta, "corrupt": corrupt, "verifiedAt": utcnow().isoformat()}
    async with ctx.sessionmaker() as db:
        await db.exec(update(File).where(col(File.id) == file.id).values(meta=meta))
        await db.commit()
    if corrupt:
        raise JobFailed(
            f"{file.path!r} is corrupt: its bytes in storage ({size} bytes, SHA-256 "
            f"{digest.hexdigest()}) do not match what was uploaded ({file.size} bytes, "
            f"SHA-256 {file.sha256})."
        )


KIND = Kind(name=JobKind.VERIFY, check=check, inputs=inputs, run=run, time_limit_seconds=3600)
