"""``/files/variant/<token>``: a file's picture at a size, rendered once, then served.

``File.imageUrl`` signs what the variant is (the source's storage key, the
box, fit, format and quality) into a link bound to the asking credential, as
a download link is, so nobody can ask for variants Depot did not hand out.
Each request is checked like a download (``core.downloads.may_download``).
The first one renders the variant (``workers.variants.render``) in a decoder
process of its own (``workers.decoders``: a crash or a hang costs that
process, answered 415 with the reason, never the API's), at most
``DEPOT_VARIANT_RENDER_CONCURRENCY`` at once, each within
``DEPOT_VARIANT_RENDER_SECONDS``, and keeps it as a
file of the source's owner derived from the source, at
``.variants/<source id>/<variant name>`` (it counts against the quota and
follows its source to the trash); every later request is served from that
file, with its ETag and an immutable cache lifetime (what a link names never
changes).
"""

from __future__ import annotations

import functools
import uuid

import anyio
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from starlette.requests import Request
from starlette.responses import Response

from api.files import GONE, LinkRefused, json_error, serve_object, verified_link
from core.downloads import may_download
from core.errors import Conflict, QuotaExceeded
from core.models import File
from core.uploads import Produced, store_upload
from workers.decoders import run_isolated
from workers.errors import JobFailed
from workers.images import chunks_of
from workers.media_limits import MediaLimits, known_excess
from workers.scratch import scratch_directory
from workers.variants import VariantSpec, render

IMMUTABLE = "private, max-age=31536000, immutable"
"""What a variant link names never changes: the browser may keep it for its life."""


def variant_path(source_id: object, spec: VariantSpec) -> str:
    return f".variants/{source_id}/{spec.name}"


async def variant(request: Request) -> Response:
    """GET or HEAD a variant: rendered on first use, then served from storage."""
    try:
        key, claims = verified_link(request, "variant")
    except LinkRefused as refused:
        return refused.response
    spec, credential = VariantSpec.from_claims(claims), claims.get("cred")
    if spec is None or not isinstance(credential, str):
        return json_error(410, GONE)
    async with request.state.sessionmaker() as db:
        source_id = await may_download(db, key, credential)
        if source_id is None:
            return json_error(410, GONE)
        path = variant_path(source_id, spec)
        # A cached hit needs no more than this query (the source's row is not read).
        made = await _stored(db, source_id, path)
        source = await db.get(File, source_id) if made is None else None
    if made is None:
        if source is None:
            return json_error(410, GONE)
        if excess := known_excess(source, MediaLimits.of(request.state.settings)):
            return json_error(415, excess)  # the probe already showed it: nothing to spool
        # No connection is held while it renders (or waits its turn to).
        try:
            made = await _render(request, source, spec, path)
        except JobFailed as failed:
            return json_error(415, str(failed))
        except QuotaExceeded as full:
            return json_error(507, full.message)
    return await serve_object(
        request,
        made.storage_key,
        filename=made.name,
        content_type=made.content_type,
        cache_control=IMMUTABLE,
    )


async def _stored(db: AsyncSession, source_id: uuid.UUID, path: str) -> File | None:
    """The live variant at ``path`` made from the file ``source_id`` (its owner's, then)."""
    found = await db.exec(
        select(File).where(
            col(File.derived_from_id) == source_id,
            col(File.path) == path,
            col(File.trashed_at).is_(None),
        )
    )
    return found.first()


async def _render(request: Request, source: File, spec: VariantSpec, path: str) -> File:
    """Render the variant and keep it; one rendered meanwhile by another request wins."""
    settings = request.state.settings
    storage = request.state.storage
    limiter: anyio.CapacityLimiter = request.state.variant_limiter
    limits = MediaLimits.of(settings)
    # A job's kind of scratch directory: a killed API's leftovers go at a worker's start.
    with scratch_directory("variant") as scratch:
        spooled, out = scratch / "source", scratch / spec.name
        async with await anyio.open_file(spooled, "wb") as handle:
            async for chunk in storage.open(source.storage_key):
                await handle.write(chunk)

        async with limiter:
            width, height = await run_isolated(
                functools.partial(render, spooled, source.path, limits, spec, out),
                name=source.path,
                seconds=settings.variant_render_seconds,
                setting="DEPOT_VARIANT_RENDER_SECONDS",
                memory_mb=settings.media_memory_limit_mb,
            )
        async with request.state.sessionmaker() as db:
            try:
                return await store_upload(
                    db,
                    storage,
                    settings,
                    source.owner_id,
                    path,
                    Produced(chunks_of(out)),
                    derived_from=source.id,
                    meta={"width": width, "height": height},
                )
            except Conflict:
                # Another request rendered the same variant first.
                made = await _stored(db, source.id, path)
                if made is None:
                    raise
                return made
