"""Resumable uploads over tus 1.0 (https://tus.io/protocols/resumable-upload), at ``/files/tus/``.

The core protocol (``HEAD`` for the offset, ``PATCH`` to append at it) and
the extensions ``creation``, ``creation-with-upload``, ``termination``,
``expiration`` and ``checksum`` (SHA-1, SHA-256, MD5; a mismatch is 460 and
keeps nothing of that request). Stock clients (tus-js-client, Uppy's Tus
plugin) work unmodified: ``Upload-Metadata`` names the file (``path``, else
``relativePath``, ``filename`` or ``name``), its type (``filetype``, ``type``
or ``contentType``: a hint, the bytes are sniffed) and optionally the whole
file's ``sha256`` in hex, which the finished file must match. Requests are
signed in by the same ``Authorization: Bearer …`` as GraphQL (session access
tokens and personal access tokens).

What an upload is, and every rule it keeps, is ``core.resumable_uploads``'s;
this module translates HTTP to it and its errors back to tus's statuses. Each
request costs the sign-in (one or two indexed reads, none when this process
verified the credential a moment ago: the sign-in cache, ``core.signins``, as
GraphQL's) plus, for ``PATCH``, one conditional UPDATE to take the upload's
lease and one to give it back with the new offset (and one more every third
of the lease while bytes flow). A ``PATCH`` signed by a session's access
token has no sign-in query: the session's liveness is one more condition (an
``EXISTS`` on two primary keys) of the lease's UPDATE, and only a refused
lease signs in to say why; one signed by a personal access token signs in
through the cache.
A completed upload's record stays until it expires: ``HEAD`` answers its
final offset, and a ``PATCH`` retried after its answer was lost is answered
again (``_after_completion``) instead of 404, with or without a
``Content-Length``.
An upload that names a pipeline template (``template``) gets its pipeline at
creation, named by the answer's ``Depot-Processing`` header; each ``PATCH``
of it reads that pipeline once and tells its stream of the bytes
(``api.upload_progress``).
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import AsyncIterable
from datetime import datetime, timedelta
from email.utils import format_datetime
from urllib.parse import urljoin

import structlog
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from api.bodies import BodySilent, BodyTooLarge, body_chunks
from api.files import upload_refusal_status
from api.upload_progress import UploadProgress, waiting_pipeline
from core import metrics, pipeline_templates
from core import resumable_uploads as uploads
from core.auth import Deferred, Principal, defer, presented
from core.errors import (
    BadUserInput,
    DepotError,
    EmailNotVerified,
    NotFound,
    RateLimited,
    Unauthenticated,
)
from core.events import FileCreated, announce
from core.models import File, ResumableUpload, UploadKind
from core.pipelines import News, Step
from core.ratelimit import Action
from core.settings import Settings
from core.users import require_verified
from schema.ids import decode_id_of, encode_id
from storage.errors import StorageError, TooLarge
from workers.pipeline import check_steps, news, requests_of, uploaded

logger = structlog.get_logger("depot.uploads")

PATH = "/files/tus/"
TUS_VERSION = "1.0.0"
EXTENSIONS = "creation,creation-with-upload,termination,expiration,checksum"
OFFSET_STREAM = "application/offset+octet-stream"
LEASE_MARGIN_SECONDS = 30
"""How much longer than the body timeout an append's lease lasts unrenewed."""

# Metadata keys, in the order they are asked, for what each names.
PATH_KEYS = ("path", "relativePath", "filename", "name")
# The pipeline template (its global id) to start on the file once it is complete.
TEMPLATE_KEY = "template"
# Names the pipeline a template started (a Job's global id) in the creation's answer.
PROCESSING_HEADER = "Depot-Processing"
TYPE_KEYS = ("filetype", "type", "contentType")


class _Refusal(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        self.status, self.code, self.message = status, code, message


def _status_of(error: DepotError) -> int:
    """tus's status for each of core's refusals."""
    if isinstance(error, uploads.ChecksumMismatch):
        return 460  # tus's "Checksum Mismatch"
    if isinstance(error, uploads.UploadBusy):
        return 423
    if isinstance(error, Unauthenticated):
        return 401
    if isinstance(error, RateLimited):
        return 429
    return upload_refusal_status(error)


def _answer(status: int, headers: dict[str, str] | None = None) -> Response:
    return Response(
        status_code=status,
        headers={"Tus-Resumable": TUS_VERSION, "Cache-Control": "no-store", **(headers or {})},
    )


def _refused(status: int, code: str, message: str, *, retry_after: int | None = None) -> Response:
    headers = {"Tus-Resumable": TUS_VERSION, "Cache-Control": "no-store"}
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    if status == 412:
        headers["Tus-Version"] = TUS_VERSION
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse({"error": message, "code": code}, status_code=status, headers=headers)


def _refused_for(error: DepotError) -> Response:
    retry_after = error.retry_after if isinstance(error, RateLimited) else None
    return _refused(_status_of(error), error.code, error.message, retry_after=retry_after)


def _http_date(when: datetime) -> str:
    return format_datetime(when, usegmt=True)


def parse_metadata(header: str) -> dict[str, str]:
    """``Upload-Metadata``: comma-separated ``key base64(value)`` pairs, values UTF-8."""
    metadata: dict[str, str] = {}
    for pair in header.split(","):
        if not pair.strip():
            continue
        key, _, value = pair.strip().partition(" ")
        if not key or " " in value.strip() or key in metadata:
            raise _Refusal(400, "BAD_REQUEST", f"Upload-Metadata has a bad pair: {pair.strip()!r}.")
        try:
            metadata[key] = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise _Refusal(
                400, "BAD_REQUEST", f"Upload-Metadata's {key!r} is not base64 of UTF-8 text."
            ) from None
    return metadata


def _first(metadata: dict[str, str], keys: tuple[str, ...]) -> str | None:
    for key in keys:
        # Uppy sends relativePath "null" for a file picked on its own.
        value = metadata.get(key, "").strip()
        if value and value != "null":
            return value
    return None


def _number(request: Request, header: str) -> int | None:
    value = request.headers.get(header)
    if value is None:
        return None
    if not value.isdigit():
        raise _Refusal(400, "BAD_REQUEST", f"{header} must be a number of bytes, not {value!r}.")
    return int(value)


def _checksum(request: Request) -> uploads.Checksum | None:
    header = request.headers.get("upload-checksum")
    if header is None:
        return None
    algorithm, _, encoded = header.strip().partition(" ")
    if algorithm not in uploads.CHECKSUM_ALGORITHMS:
        raise _Refusal(
            400,
            "BAD_REQUEST",
            f"Upload-Checksum takes {', '.join(uploads.CHECKSUM_ALGORITHMS)}, not {algorithm!r}.",
        )
    try:
        digest = base64.b64decode(encoded.strip(), validate=True)
    except binascii.Error:
        raise _Refusal(400, "BAD_REQUEST", "Upload-Checksum's digest is not base64.") from None
    return uploads.Checksum(algorithm, digest)


def _has_body(request: Request) -> bool:
    return (_number(request, "content-length") or 0) > 0 or "transfer-encoding" in request.headers


class TusRoutes:
    """The tus endpoint, holding what its requests share: the hash states of the
    uploads this process receives (``core.resumable_uploads.Hashes``)."""

    def __init__(self) -> None:
        self.hashes = uploads.Hashes()

    @property
    def routes(self) -> list[Route]:
        collection = ["POST", "OPTIONS"]
        member = ["HEAD", "PATCH", "DELETE", "POST", "OPTIONS"]
        return [
            Route(PATH, self.collection, methods=collection),
            Route(PATH.rstrip("/"), self.collection, methods=collection),
            Route(PATH + "{upload_id}", self.member, methods=member),
        ]

    async def collection(self, request: Request) -> Response:
        try:
            if request.method == "OPTIONS":
                return self._options(request)
            _require_version(request)
            principal = await _sign_in(request)
            return await self._create(request, principal)
        except _Refusal as refusal:
            return _refused(refusal.status, refusal.code, refusal.message)
        except DepotError as error:
            return _refused_for(error)
        except StorageError as error:
            if not error.transient:
                raise
            # Clients try 5xx again (tus-js-client's retryDelays): the upload waits.
            return _refused(503, "SERVICE_UNAVAILABLE", "Storage is unavailable; try again.")

    async def member(self, request: Request) -> Response:
        method = request.method
        if method == "POST":  # for clients that cannot send PATCH or DELETE
            method = request.headers.get("x-http-method-override", "").upper()
        try:
            if method == "OPTIONS":
                return self._options(request)
            if method not in ("HEAD", "PATCH", "DELETE"):
                raise _Refusal(405, "METHOD_NOT_ALLOWED", "Use HEAD, PATCH or DELETE here.")
            _require_version(request)
            if method == "PATCH":
                return await self._patch(request)
            principal = await _sign_in(request)
            upload_id = _upload_id(request)
            if method == "HEAD":
                return await self._head(request, principal, upload_id)
            return await self._terminate(request, principal, upload_id)
        except _Refusal as refusal:
            return _refused(refusal.status, refusal.code, refusal.message)
        except DepotError as error:
            return _refused_for(error)
        except StorageError as error:
            if not error.transient:
                raise
            # Clients try 5xx again (tus-js-client's retryDelays): the upload waits.
            return _refused(503, "SERVICE_UNAVAILABLE", "Storage is unavailable; try again.")

    def _options(self, request: Request) -> Response:
        settings: Settings = request.state.settings
        return _answer(
            204,
            {
                "Tus-Version": TUS_VERSION,
                "Tus-Extension": EXTENSIONS,
                "Tus-Max-Size": str(settings.max_upload_bytes),
                "Tus-Checksum-Algorithm": ",".join(uploads.CHECKSUM_ALGORITHMS),
            },
        )

    async def _create(self, request: Request, principal: Principal) -> Response:
        settings: Settings = request.state.settings
        if "upload-defer-length" in request.headers:
            raise _Refusal(400, "BAD_REQUEST", "Send Upload-Length: Depot reserves it up front.")
        length = _number(request, "upload-length")
        if length is None:
            raise _Refusal(400, "BAD_REQUEST", "Send Upload-Length, the file's size in bytes.")
        if length > settings.max_upload_bytes:
            raise _Refusal(
                413,
                "PAYLOAD_TOO_LARGE",
                f"Files may have at most {settings.max_upload_bytes} bytes (Tus-Max-Size).",
            )
        raw_metadata = request.headers.get("upload-metadata", "")
        metadata = parse_metadata(raw_metadata)
        path = _first(metadata, PATH_KEYS)
        if path is None:
            raise _Refusal(
                400,
                "BAD_REQUEST",
                "Name the file in Upload-Metadata: `path` (e.g. photos/cat.png) or `filename`.",
            )
        steps = None
        if TEMPLATE_KEY in metadata:
            # Checked now, as createUpload checks its pipeline; created now too, waiting
            # for the file, so that its stream carries the bytes as they arrive.
            steps = await _template_steps(request, principal, metadata, _first(metadata, TYPE_KEYS))
        checksum = _checksum(request)
        with_body = _has_body(request)
        if with_body and request.headers.get("content-type") != OFFSET_STREAM:
            raise _Refusal(415, "UNSUPPORTED_MEDIA_TYPE", f"Send the bytes as {OFFSET_STREAM}.")
        try:
            require_verified(settings, principal.user)
        except EmailNotVerified as error:
            raise _Refusal(403, error.code, error.message) from None
        # One upload started, as uploadFile and createUpload count (PATCHes do not).
        client = request.client
        await request.state.action_limiter.hit(
            Action.UPLOAD,
            user=principal.user.id,
            address=client.host if client is not None else "unknown",
        )
        async with request.state.sessionmaker() as db:
            try:
                upload = await uploads.create(
                    db,
                    request.state.storage,
                    self.hashes,
                    principal.user.id,
                    path=path,
                    length=length,
                    content_type=_first(metadata, TYPE_KEYS),
                    sha256=metadata.get("sha256"),
                    metadata=raw_metadata,
                    max_upload_bytes=settings.max_upload_bytes,
                    expires_in=timedelta(hours=settings.resumable_upload_hours),
                    pipeline=steps,
                    news=_news(request),
                )
            except BadUserInput as error:
                raise _Refusal(400, error.code, error.message) from None
        links = request.state.links.for_request(request)
        headers = {
            "Location": urljoin(links.base_url, PATH + upload.id.hex),
            "Upload-Expires": _http_date(upload.expires_at),
        }
        pipeline = await waiting_pipeline(request.state.sessionmaker, upload.pipeline_id)
        if pipeline is not None:
            # The job to follow (jobEvents) from the first byte to the pipeline's end.
            headers[PROCESSING_HEADER] = encode_id("Job", pipeline.id)
            await UploadProgress(request.state.events, pipeline, 0, length).tell()
        if not (with_body or length == 0):
            return _answer(201, headers)
        try:
            response = await self._append(request, principal.user.id, upload.id, 0, checksum)
        except _Refusal as refusal:
            response = _refused(refusal.status, refusal.code, refusal.message)
        except DepotError as error:
            response = _refused_for(error)
        if response.status_code == 204:
            response.status_code = 201
        # Even when the bytes were refused the upload exists: say where, to resume it.
        response.headers.update(headers)
        return response

    async def _head(self, request: Request, principal: Principal, upload_id: uuid.UUID) -> Response:
        async with request.state.sessionmaker() as db:
            upload = await uploads.get_upload(db, principal.user.id, upload_id, UploadKind.TUS)
        headers = {
            "Upload-Offset": str(upload.offset),
            "Upload-Length": str(upload.length),
            "Upload-Expires": _http_date(upload.expires_at),
        }
        if upload.upload_metadata:
            headers["Upload-Metadata"] = upload.upload_metadata
        return _answer(200, headers)

    async def _patch(self, request: Request) -> Response:
        """Append; signed in by the lease's own UPDATE where the token allows (``defer``):
        a stream of PATCHes carries the same token each time, and its check was a query."""
        signed_in = await _sign_in_deferred(request)
        upload_id = _upload_id(request)
        if request.headers.get("content-type") != OFFSET_STREAM:
            raise _Refusal(415, "UNSUPPORTED_MEDIA_TYPE", f"Send PATCH bodies as {OFFSET_STREAM}.")
        offset = _number(request, "upload-offset")
        if offset is None:
            raise _Refusal(400, "BAD_REQUEST", "Send Upload-Offset, where these bytes start.")
        checksum = _checksum(request)
        if isinstance(signed_in, Deferred):
            owner_id, live = signed_in.user_id, signed_in
        else:
            owner_id, live = signed_in.user.id, None
        return await self._append(request, owner_id, upload_id, offset, checksum, live)

    async def _append(
        self,
        request: Request,
        owner_id: uuid.UUID,
        upload_id: uuid.UUID,
        offset: int,
        checksum: uploads.Checksum | None,
        live: Deferred | None = None,
    ) -> Response:
        """Append the body at ``offset``. ``live``: the deferred sign-in's condition
        (``core.auth.defer``); when the lease is refused, the request signs in in full
        first, so that a dead credential is refused as such."""
        settings: Settings = request.state.settings
        silence_s = settings.body_timeout_seconds
        state = request.state
        watch: UploadProgress | None = None

        async def watched(
            upload: ResumableUpload, chunks: AsyncIterable[bytes]
        ) -> AsyncIterable[bytes]:
            # The claimed row names its pipeline: only an upload with one pays a read.
            nonlocal watch
            pipeline = await waiting_pipeline(state.sessionmaker, upload.pipeline_id)
            if pipeline is None:
                return chunks
            watch = UploadProgress(state.events, pipeline, upload.offset, upload.length)
            return watch.through(chunks)

        async with state.sessionmaker() as db:
            try:
                progress = await uploads.append(
                    db,
                    state.storage,
                    self.hashes,
                    owner_id,
                    upload_id,
                    offset=offset,
                    chunks=body_chunks(request, silence_s=silence_s),
                    checksum=checksum,
                    lease=timedelta(seconds=silence_s + LEASE_MARGIN_SECONDS),
                    expires_in=timedelta(hours=settings.resumable_upload_hours),
                    news=_news(request),
                    watch=watched,
                    signed_in=live,
                )
            except TooLarge:
                raise _Refusal(
                    413, "PAYLOAD_TOO_LARGE", "More bytes were sent than Upload-Length left."
                ) from None
            except BodySilent as silent:
                raise _Refusal(silent.status, silent.code, silent.message) from None
            except uploads.UploadComplete as complete:
                if live is not None:
                    await _sign_in(request)
                return await _after_completion(request, offset, complete)
            except DepotError:
                if live is not None:
                    await _sign_in(request)
                raise
            except ClientDisconnect:
                # Nobody reads this; what arrived is kept (without a checksum).
                raise _Refusal(400, "BAD_REQUEST", "The client went away.") from None
        if progress.file is not None:
            metrics.UPLOAD_BYTES.labels("tus").inc(progress.file.size)
            await _announce(request, progress.file)
            # Its pipeline was queued with the file, in its transaction: start it.
            await uploaded(
                state.sessionmaker, state.jobs.send, state.events, settings, progress.file
            )
        elif watch is not None:
            await watch.tell(progress.offset)
        return _answer(
            204,
            {
                "Upload-Offset": str(progress.offset),
                "Upload-Expires": _http_date(progress.expires_at),
            },
        )

    async def _terminate(
        self, request: Request, principal: Principal, upload_id: uuid.UUID
    ) -> Response:
        async with request.state.sessionmaker() as db:
            await uploads.terminate(
                db,
                request.state.storage,
                self.hashes,
                principal.user.id,
                upload_id,
                news=_news(request),
            )
        return _answer(204)


async def _after_completion(
    request: Request, offset: int, complete: uploads.UploadComplete
) -> Response:
    """The answer to a PATCH of a completed upload: most likely the last one again, its
    answer lost (tus-js-client retries it). If its bytes end where the upload did, it
    is answered as the first time was; otherwise it is the offset mismatch tus calls 409.

    Where they end, ``Content-Length`` says without reading them; a chunked body
    (no ``Content-Length``: a client streaming its source) is read to its end and
    dropped, at most one byte past what the upload had left at ``offset``, so that
    its retry is answered alike instead of 409 (which tus-js-client would follow
    with a ``HEAD`` and a wait).
    """
    sent = _number(request, "content-length")
    if sent is None and 0 <= offset < complete.length:
        sent = await _discarded_length(request, complete.length - offset)
    if sent is not None and offset + sent == complete.length:
        return _answer(
            204,
            {
                "Upload-Offset": str(complete.length),
                "Upload-Expires": _http_date(complete.expires_at),
            },
        )
    return _refused(409, complete.code, complete.message)


async def _discarded_length(request: Request, expected: int) -> int | None:
    """How many bytes the body has, read and dropped; None past ``expected``."""
    silence_s: float = request.state.settings.body_timeout_seconds
    received = 0
    try:
        async for chunk in body_chunks(request, silence_s=silence_s, limit=expected):
            received += len(chunk)
    except BodyTooLarge:
        return None
    except BodySilent as silent:
        raise _Refusal(silent.status, silent.code, silent.message) from None
    except ClientDisconnect:
        raise _Refusal(400, "BAD_REQUEST", "The client went away.") from None
    return received


async def _template_steps(
    request: Request, principal: Principal, metadata: dict[str, str], content_type: str | None
) -> list[Step]:
    """The checked steps of the template ``Upload-Metadata`` names (its global id)."""
    try:
        key = decode_id_of("PipelineTemplate", metadata[TEMPLATE_KEY], field="template")
        async with request.state.sessionmaker() as db:
            template = await pipeline_templates.get_owned(db, principal.user.id, key)
        requests = requests_of(pipeline_templates.steps_of(template))
        inputs = [content_type] if content_type else None
        return check_steps(requests, inputs, request.state.settings)
    except (BadUserInput, NotFound) as error:
        raise _Refusal(400, error.code, f"Upload-Metadata template: {error.message}") from None


def _news(request: Request) -> News:
    return news(request.state.events, request.state.settings)


async def _announce(request: Request, file: File) -> None:
    await announce(request.state.events, FileCreated.of(file), owner_id=file.owner_id)


def _require_version(request: Request) -> None:
    if request.headers.get("tus-resumable") != TUS_VERSION:
        raise _Refusal(
            412, "PRECONDITION_FAILED", f"Send Tus-Resumable: {TUS_VERSION}, the version spoken."
        )


def _upload_id(request: Request) -> uuid.UUID:
    try:
        return uuid.UUID(hex=request.path_params["upload_id"])
    except ValueError:
        raise NotFound("No such upload.") from None


async def _sign_in_deferred(request: Request) -> Principal | Deferred:
    """An access token verified without a query (``core.auth.defer``), else signed in."""
    authorization = request.headers.get("authorization")
    if authorization:
        deferred = defer(request.state.settings, authorization)
        if deferred is not None:
            return deferred
    return await _sign_in(request)


async def _sign_in(request: Request) -> Principal:
    """The caller, through the sign-in cache (``core.signins``): the PATCHes of one
    upload carry the same credential, which one read verified for all of them."""
    authorization = request.headers.get("authorization")
    if not authorization:
        raise Unauthenticated("Send `Authorization: Bearer <token>`, as for GraphQL.")
    credential = presented(request.state.settings, authorization)
    principal: Principal = await request.state.signins.sign_in(credential)
    return principal
