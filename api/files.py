"""Depot's own byte routes, behind signed links: downloads, and direct-upload PUTs.

Every download link is Depot's, whatever the storage: it is verified, then
checked against the database on every request (``core.downloads``: the file
neither trashed nor purged, its owner active, the credential that asked for
it still live), and only then served: streamed from local (and memory)
storage, or redirected (307) to an S3 URL presigned for
``REDIRECT_SECONDS``, so no link outlives the file or the credential. Upload
links are ours for local storage only; S3 presigns its own PUTs.

Every refusal of a link has the same body whatever key it names, so a link
reveals nothing about files its holder may not see: 403 for a link that is
not ours (tampered, another purpose), 410 for one that expired, whose file
is gone or trashed, whose owner was deactivated or whose credential ended.

Bytes stream both ways: a download reads the requested range in blocks, an
upload writes the request body as it arrives. Neither holds a file in memory.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from email.utils import format_datetime, parsedate_to_datetime
from urllib.parse import urljoin

import anyio
from starlette.requests import ClientDisconnect, HTTPConnection, Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from api.bodies import BodySilent, body_chunks
from api.upload_progress import UploadProgress, waiting_pipeline
from core.content import OCTET_STREAM, Fingerprint, content_disposition
from core.direct_uploads import open_ticket, record_seen
from core.downloads import may_download
from core.errors import Conflict, DepotError, NotFound, QuotaExceeded
from core.links import LinkExpired, LinkInvalid, LinkSigner, Purpose
from core.probe import Sample, probe
from core.resumable_uploads import UploadExpired
from storage.base import Stat, Storage
from storage.errors import ObjectNotFound, TooLarge

PATHS: dict[Purpose, str] = {
    "download": "/files/download/",
    "upload": "/files/upload/",
    "variant": "/files/variant/",
    "multipart": "/files/multipart/",
}
"""Where each purpose's route lives; a link is its path followed by its token."""

REDIRECT_SECONDS = 60
"""How long the presigned S3 URL a checked download link redirects to stays valid:
long enough to start the download, too short to pass around."""

_INVALID = "This link is not valid."
GONE = "This link has expired; ask for a new one."
_MEDIA_TYPE = re.compile(r"[\w.+-]+/[\w.+-]+")


class LinkRefused(Exception):
    """A signed link that leads nowhere: ``response`` says so without saying why."""

    def __init__(self, response: Response) -> None:
        self.response = response


def upload_refusal_status(error: DepotError) -> int:
    """The HTTP status of core's refusal of an upload request: the one map the routes
    that speak another protocol's errors (tus, S3's XML) start from."""
    if isinstance(error, UploadExpired):
        return 410
    if isinstance(error, NotFound):
        return 404
    if isinstance(error, Conflict):
        return 409
    if isinstance(error, QuotaExceeded):
        return 413
    return 400


def json_error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The JSON error every signed-link route answers with, never cached."""
    return JSONResponse(
        {"error": message},
        status_code=status,
        headers={"Cache-Control": "no-store", **(headers or {})},
    )


@dataclass(frozen=True)
class RouteLinks:
    """Signed links to the routes below, at ``base_url`` (``storage.Links``): every
    download URL, and local and memory storage's upload URLs.

    Built once by the app, which gives it to storage and to these routes,
    so the links storage signs are the ones the routes verify. With
    ``follow_request`` (development, no ``DEPOT_PUBLIC_BASE_URL`` set), each
    request's links point at the host it was sent to (``for_request``).
    """

    signer: LinkSigner
    base_url: str
    follow_request: bool = False

    def for_request(self, connection: HTTPConnection) -> RouteLinks:
        """These links as ``connection``'s client should be given them.

        Following the request, the base is its scheme and ``Host`` (``ws``
        read as ``http``), which uvicorn resolved through
        ``DEPOT_TRUSTED_PROXIES`` only; otherwise ``base_url`` as configured.
        """
        if not self.follow_request:
            return self
        base = connection.base_url
        scheme = {"ws": "http", "wss": "https"}.get(base.scheme, base.scheme)
        return replace(self, base_url=str(base.replace(scheme=scheme)))

    def url(self, purpose: Purpose, expires_at: datetime, **claims: str | int) -> str:
        """The link to ``purpose``'s route carrying ``claims`` until ``expires_at``."""
        token = self.signer.sign(purpose, expires_at, **claims)
        return urljoin(self.base_url, PATHS[purpose] + token)

    def download(
        self, key: str, *, filename: str, content_type: str, expires_at: datetime, credential: str
    ) -> str:
        return self.url(
            "download", expires_at, key=key, name=filename, type=content_type, cred=credential
        )

    def upload(self, key: str, *, size: int, expires_at: datetime) -> str:
        return self.url("upload", expires_at, key=key, size=size)

    def variant(
        self, key: str, spec: dict[str, str | int], *, expires_at: datetime, credential: str
    ) -> str:
        """A link to the variant ``spec`` (``VariantSpec.claims``) of ``key``'s file."""
        return self.url("variant", expires_at, key=key, cred=credential, **spec)

    def multipart(
        self, upload: str, *, owner: str, operation: str, expires_at: datetime, credential: str
    ) -> str:
        """A link to ``api.multipart_uploads`` for one request of one upload."""
        return self.url(
            "multipart", expires_at, key=upload, own=owner, op=operation, cred=credential
        )


def verified_link(request: Request, purpose: Purpose) -> tuple[str, dict[str, object]]:
    """The storage key and claims of the link's token, or a refusal that says nothing of it."""
    links: RouteLinks = request.state.links
    try:
        claims = links.signer.verify(purpose, request.path_params["token"])
    except LinkExpired:
        raise LinkRefused(json_error(410, GONE)) from None
    except LinkInvalid:
        raise LinkRefused(json_error(403, _INVALID)) from None
    key = claims.get("key")
    if not isinstance(key, str):
        raise LinkRefused(json_error(403, _INVALID))
    return key, claims


# -- downloads --------------------------------------------------------------------


def _etag(stat: Stat) -> str:
    etag = stat.etag
    return etag if etag.startswith(('"', 'W/"')) else f'"{etag}"'


def _etag_matches(header: str, etag: str) -> bool:
    """Weak comparison, as ``If-None-Match`` wants (RFC 9110 13.1.2)."""
    if header.strip() == "*":
        return True
    opaque = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == opaque for tag in header.split(","))


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """The ``[start, end)`` of a single ``bytes=`` range, or None if it cannot be served.

    Accepts ``a-b``, ``a-`` and ``-n``; several ranges, other units and ranges
    that start past the end are refused (the caller answers 416).
    """
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash or not (first.isdigit() or last.isdigit()):
        return None
    if not first:
        if not last.isdigit() or int(last) == 0:
            return None
        return max(0, size - int(last)), size
    if not first.isdigit() or (last and not last.isdigit()):
        return None
    start = int(first)
    end = size if not last else min(int(last) + 1, size)
    if start >= size or end <= start:
        return None
    return start, end


def _if_range_holds(header: str | None, etag: str, last_modified: str) -> bool:
    """Whether a ``Range`` still applies: no ``If-Range``, or it names the current version."""
    if header is None:
        return True
    header = header.strip()
    if header.startswith(('"', "W/")):
        return not header.startswith("W/") and header == etag
    return header == last_modified


async def _stream(storage: Storage, key: str, start: int, end: int) -> AsyncIterator[bytes]:
    chunks = storage.open(key, start, end)
    try:
        async for chunk in chunks:
            yield chunk
    finally:
        # Close the file now, even when the client went away mid-download.
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()


async def download(request: Request) -> Response:
    """GET or HEAD ``/files/download/<token>``: the file as an attachment, ranges included.

    Checked on every request, before storage is asked anything (one query);
    on S3 the answer is a redirect to a presigned URL, which serves ranges itself.
    """
    try:
        key, claims = verified_link(request, "download")
    except LinkRefused as refused:
        return refused.response
    name = claims.get("name")
    media = claims.get("type")
    credential = claims.get("cred")
    filename = name if isinstance(name, str) else ""
    content_type = media if isinstance(media, str) and _MEDIA_TYPE.fullmatch(media) else None
    if not isinstance(credential, str):
        return json_error(410, GONE)
    async with request.state.sessionmaker() as db:
        if not await may_download(db, key, credential):
            return json_error(410, GONE)
    return await serve_object(
        request, key, filename=filename, content_type=content_type, cache_control=PRIVATE
    )


PRIVATE = "private, no-transform"
"""Downloads: for the one client that asked, which revalidates (ETag) each time."""


async def serve_object(
    request: Request, key: str, *, filename: str, content_type: str | None, cache_control: str
) -> Response:
    """Storage object ``key`` as an attachment: ranges, conditional requests, or (S3) a
    redirect to a short-lived presigned URL. The caller has checked that it may."""
    storage: Storage = request.state.storage
    presigned = await storage.download_url(
        key,
        filename=filename,
        content_type=content_type or OCTET_STREAM,
        expires_in=timedelta(seconds=REDIRECT_SECONDS),
    )
    if presigned is not None:
        return RedirectResponse(presigned, status_code=307, headers={"Cache-Control": "no-store"})
    try:
        stat = await storage.stat(key)
    except ObjectNotFound:
        return json_error(410, GONE)
    etag = _etag(stat)
    last_modified = format_datetime(stat.modified_at, usegmt=True)
    headers = {
        "ETag": etag,
        "Last-Modified": last_modified,
        "Accept-Ranges": "bytes",
        "Cache-Control": cache_control,
        "X-Content-Type-Options": "nosniff",
        "Content-Disposition": content_disposition(filename),
    }
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None:
        if _etag_matches(if_none_match, etag):
            return Response(status_code=304, headers=headers)
    elif _not_modified_since(request.headers.get("if-modified-since"), stat):
        return Response(status_code=304, headers=headers)
    start, end, status = 0, stat.size, 200
    range_header = request.headers.get("range")
    if range_header is not None and _if_range_holds(
        request.headers.get("if-range"), etag, last_modified
    ):
        selected = parse_range(range_header, stat.size)
        if selected is None:
            return json_error(
                416,
                "The range is not satisfiable: ask for one range within the file.",
                {"Content-Range": f"bytes */{stat.size}", **headers},
            )
        start, end = selected
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{stat.size}"
    headers["Content-Length"] = str(end - start)
    media_type = content_type or OCTET_STREAM
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers, media_type=media_type)
    return StreamingResponse(
        _stream(storage, key, start, end),
        status_code=status,
        headers=headers,
        media_type=media_type,
    )


def _not_modified_since(header: str | None, stat: Stat) -> bool:
    if header is None:
        return False
    try:
        since = parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return False
    if since.tzinfo is None:
        return False
    return stat.modified_at.replace(microsecond=0) <= since


# -- direct uploads ---------------------------------------------------------------


class _ShortBody(Exception):
    """The body ended before the declared number of bytes."""


async def _exactly(chunks: AsyncIterable[bytes], size: int) -> AsyncIterator[bytes]:
    """``chunks``, failing (so storage keeps nothing) if they stop short of ``size``."""
    received = 0
    async for chunk in chunks:
        received += len(chunk)
        yield chunk
    if received < size:
        raise _ShortBody


async def upload(request: Request) -> Response:
    """PUT ``/files/upload/<token>``: exactly the ticket's bytes, stored atomically.

    A PUT may be repeated while the ticket is open (the last complete one
    wins); once ``completeUpload`` ended the ticket, its link is gone.
    """
    try:
        key, claims = verified_link(request, "upload")
    except LinkRefused as refused:
        return refused.response
    size = claims.get("size")
    if not isinstance(size, int) or isinstance(size, bool):
        return json_error(403, _INVALID)
    declared = request.headers.get("content-length")
    if declared is None:
        return json_error(411, f"Send Content-Length: {size}, the size given to createUpload.")
    if not declared.isdigit():
        return json_error(400, "Content-Length must be a number of bytes.")
    if int(declared) > size:
        return json_error(413, f"This upload takes exactly {size} bytes, not {declared}.")
    if int(declared) != size:
        return json_error(400, f"This upload takes exactly {size} bytes, not {declared}.")
    async with request.state.sessionmaker() as db:
        ticket = await open_ticket(db, key)
    if ticket is None:
        return json_error(410, GONE)
    storage: Storage = request.state.storage
    silence_s: float = request.state.settings.body_timeout_seconds
    body = body_chunks(request, silence_s=silence_s)
    # The ticket's pipeline hears the bytes arrive (api.upload_progress).
    pipeline = await waiting_pipeline(request.state.sessionmaker, ticket.pipeline_id)
    watch = None
    if pipeline is not None:
        watch = UploadProgress(request.state.events, pipeline, 0, size)
        body = watch.through(body)
    # Hashed (by storage, as it writes: off the event loop) and sniffed as it streams
    # in, so completeUpload need not read it again.
    fingerprint = Fingerprint.tapped(_exactly(body, size))
    sample = Sample(fingerprint)
    try:
        await storage.put(key, sample, max_size=size, tap=fingerprint.tap)
        stored = await storage.stat(key)
    except BodySilent as silent:
        return json_error(408, silent.message)
    except TooLarge:
        return json_error(413, f"This upload takes exactly {size} bytes; more were sent.")
    except _ShortBody:
        return json_error(400, f"The body ended before {size} bytes; nothing was stored.")
    except ClientDisconnect:
        return json_error(400, "The client went away before the upload ended; nothing was stored.")
    meta = await anyio.to_thread.run_sync(probe, sample, fingerprint.content_type)
    async with request.state.sessionmaker() as db:
        await record_seen(db, key, fingerprint, meta, stored.etag)
    if watch is not None:
        await watch.tell(size)
    return Response(status_code=204, headers={"Cache-Control": "no-store"})


ROUTES = [
    Route(PATHS["download"] + "{token}", download, methods=["GET", "HEAD"]),
    Route(PATHS["upload"] + "{token}", upload, methods=["PUT"]),
]
