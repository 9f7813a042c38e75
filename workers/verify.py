"""``verify``: read a file's bytes back from storage and compare their SHA-256.

A mismatch (or a wrong length) marks the file corrupt in its metadata and
fails the job saying so; a match records when the file was last verified.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import anyio

from core.time import utcnow
from workers.context import JobContext
from workers.errors import JobFailed
from workers.kind import Kind
from workers.params import FileId

# Chunks smaller than this are hashed on the event loop (tens of microseconds).
INLINE_HASH = 64 * 1024


@dataclass(frozen=True)
class Params:
    """Read a file back from storage and check its SHA-256."""

    file_id: FileId


async def run(ctx: JobContext) -> None:
    [file] = await ctx.inputs()
    digest = hashlib.sha256()
    size = 0
    await ctx.progress(0.0, f"Reading {file.name}")
    async for chunk in ctx.read(file):
        if len(chunk) < INLINE_HASH:
            digest.update(chunk)  # faster than a thread hop
        else:
            # hashlib lets go of the GIL on large buffers: hash beside the event loop.
            await anyio.to_thread.run_sync(digest.update, chunk)
        size += len(chunk)
        await ctx.progress(size / file.size if file.size else 1.0, f"Reading {file.name}")
    corrupt = size != file.size or digest.hexdigest() != file.sha256
    ctx.set_meta(file, {**file.meta, "corrupt": corrupt, "verifiedAt": utcnow().isoformat()})
    if corrupt:
        raise JobFailed(
            f"{file.path!r} is corrupt: its bytes in storage ({size} bytes, SHA-256 "
            f"{digest.hexdigest()}) do not match what was uploaded ({file.size} bytes, "
            f"SHA-256 {file.sha256})."
        )


KIND = Kind(name="verify", params=Params, run=run, time_limit_seconds=3600, makes=None)
