"""The control requests of a direct multipart upload, answered as S3 answers them.

Uppy 6's AwsS3 plugin (``@uppy/aws-s3`` 6.3) sends every S3 request of a
multipart upload itself, to the URL its ``signRequest`` callback returns
(``signUploadRequest`` in GraphQL). The parts' PUTs go to S3, presigned;
creating, listing, completing and aborting come here instead, to a link
signed for one request of the caller's own upload (``core.links``, purpose
``multipart``: the upload, its owner, the operation, for
``CONTROL_LINK_MINUTES``), so
that Depot does what each means: the quota was reserved when the link was
signed, completing makes the file (``core.multipart_uploads.complete``),
aborting releases the reservation. Each answer is the XML S3 would send,
which is all the plugin reads; refusals are S3's ``<Error>`` with Depot's
code (``NOT_FOUND``, ``BAD_USER_INPUT``, ...) as its ``<Code>``.

The link is the credential, as a presigned URL is S3's: the route reads no
``Authorization``. Like a download link it names the credential that signed
it, and dies with it (``core.downloads.credential_is_live``): after
``logout``, a revoked personal access token or a deactivated account every
request is refused (410), so a page left open cannot complete or list an
upload for a user who signed out. Cost per request: one JWT check and two
primary-key reads (the credential, the upload) before the operation's own
work.
"""

from __future__ import annotations

import html
import re
import uuid
from datetime import timedelta
from typing import Final
from xml.sax.saxutils import escape

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from api.bodies import BodyRefused, body_chunks
from api.files import PATHS, RouteLinks, upload_refusal_status
from core import metrics, multipart_uploads, resumable_uploads
from core.downloads import credential_is_live
from core.errors import BadUserInput, DepotError
from core.events import FileCreated, announce
from core.ids import encode_id
from core.links import LinkExpired, LinkInvalid
from core.models import UploadKind
from core.multipart_uploads import METHODS, Operation
from core.time import utcnow
from storage.errors import StorageError
from workers.pipeline import news, uploaded

MAX_COMPLETE_BYTES: Final = 2 * 1024 * 1024
"""The longest CompleteMultipartUpload body: 10,000 parts of about 100 bytes each."""

BUCKET: Final = "depot"
"""The ``<Bucket>`` of the answers: the real one is storage's and stays private."""

_NAMESPACE = "http://s3.amazonaws.com/doc/2006-03-01/"
_PART = re.compile(r"<Part>(.*?)</Part>", re.DOTALL)
_NUMBER = re.compile(r"<PartNumber>\s*(\d{1,5})\s*</PartNumber>")
_ETAG = re.compile(r"<ETag>([^<]*)</ETag>")


def _xml(status: int, body: str = "") -> Response:
    content = f'<?xml version="1.0" encoding="UTF-8"?>\n{body}' if body else b""
    # Exactly application/xml: the plugin reads an <Error> only under that type.
    return Response(
        content, status, media_type="application/xml", headers={"Cache-Control": "no-store"}
    )


def _error(status: int, code: str, message: str) -> Response:
    return _xml(status, f"<Error><Code>{code}</Code><Message>{escape(message)}</Message></Error>")


def parse_parts(body: str) -> list[tuple[int, str]]:
    """The (number, ETag) of each ``<Part>`` of a CompleteMultipartUpload body.

    Read by pattern rather than by an XML parser: the shape is fixed, and no
    entity or DTD of the client's is ever expanded. An ETag is sent to S3
    quoted, however the client wrote it.
    """
    parts = []
    for part in _PART.findall(body):
        number, etag = _NUMBER.search(part), _ETAG.search(part)
        if number is None or etag is None:
            raise BadUserInput("Each <Part> needs a <PartNumber> and an <ETag>.", field="parts")
        parts.append((int(number.group(1)), f'"{html.unescape(etag.group(1)).strip(chr(34))}"'))
    return parts


async def control(request: Request) -> Response:
    """One S3 control request of a multipart upload, as its link says."""
    links: RouteLinks = request.state.links
    try:
        claims = links.signer.verify("multipart", request.path_params["token"])
        operation = Operation(str(claims["op"]))
        upload_id, owner_id = uuid.UUID(str(claims["key"])), uuid.UUID(str(claims["own"]))
        credential = str(claims["cred"])
    except LinkExpired:
        return _error(410, "EXPIRED", "This link has expired; sign the request again.")
    except (LinkInvalid, KeyError, ValueError):
        return _error(403, "FORBIDDEN", "This link is not valid.")
    if request.method != METHODS[operation]:
        return _error(405, "METHOD_NOT_ALLOWED", f"This link takes {METHODS[operation]} only.")
    try:
        return await _answer(request, operation, upload_id, owner_id, credential)
    except DepotError as error:
        return _error(upload_refusal_status(error), error.code, error.message)
    except BodyRefused as refused:
        return _error(refused.status, refused.code, refused.message)
    except ClientDisconnect:
        return _error(400, "BAD_REQUEST", "The client went away.")
    except StorageError as error:
        if not error.transient:
            raise
        # The plugin tries a 5xx again.
        return _error(503, "SERVICE_UNAVAILABLE", "Storage is unavailable; try again.")


async def _answer(
    request: Request,
    operation: Operation,
    upload_id: uuid.UUID,
    owner_id: uuid.UUID,
    credential: str,
) -> Response:
    state = request.state
    key = encode_id("ResumableUpload", upload_id)
    async with state.sessionmaker() as db:
        if not await credential_is_live(db, credential, owner_id):
            return _error(410, "EXPIRED", "The sign-in behind this link has ended; sign in again.")
        upload = await resumable_uploads.get_upload(db, owner_id, upload_id, UploadKind.MULTIPART)
        handle = upload.storage_handle
        if operation is Operation.CREATE:
            # Created (and its bytes reserved) when the link was signed: S3's answer.
            return _xml(
                200,
                f'<InitiateMultipartUploadResult xmlns="{_NAMESPACE}"><Bucket>{BUCKET}</Bucket>'
                f"<Key>{key}</Key><UploadId>{escape(handle)}</UploadId>"
                "</InitiateMultipartUploadResult>",
            )
        if operation is Operation.LIST:
            held = await multipart_uploads.list_parts(db, state.storage, owner_id, upload_id)
            listed = "".join(
                f"<Part><PartNumber>{part.number}</PartNumber><ETag>{escape(part.etag)}</ETag>"
                f"<Size>{part.size}</Size></Part>"
                for part in held
            )
            return _xml(
                200,
                f'<ListPartsResult xmlns="{_NAMESPACE}"><Bucket>{BUCKET}</Bucket><Key>{key}</Key>'
                f"<UploadId>{escape(handle)}</UploadId><IsTruncated>false</IsTruncated>{listed}"
                "</ListPartsResult>",
            )
        if operation is Operation.ABORT:
            await resumable_uploads.terminate(
                db,
                state.storage,
                None,
                owner_id,
                upload_id,
                news=news(state.events, state.settings),
            )
            return _xml(204)
        silence_s = state.settings.body_timeout_seconds
        body = b"".join(
            [c async for c in body_chunks(request, silence_s=silence_s, limit=MAX_COMPLETE_BYTES)]
        )
        parts = parse_parts(body.decode("utf-8", "replace"))
        file = await multipart_uploads.complete(
            db,
            state.storage,
            owner_id,
            upload_id,
            parts,
            news=news(state.events, state.settings),
        )
    metrics.UPLOAD_BYTES.labels("s3-multipart").inc(file.size)
    await announce(state.events, FileCreated.of(file), owner_id=file.owner_id)
    # Its pipeline, if its creation named one, was queued with the file: start it.
    await uploaded(state.sessionmaker, state.jobs.send, state.events, state.settings, file)
    # Where the file is now, as S3 says where the object is: its download link; its key, the
    # File's id (the page's `node(id:)`).
    location = state.links.for_request(request).download(
        file.storage_key,
        filename=file.name,
        content_type=file.content_type,
        expires_at=utcnow() + timedelta(minutes=state.settings.download_url_minutes),
        credential=credential,
    )
    return _xml(
        200,
        f'<CompleteMultipartUploadResult xmlns="{_NAMESPACE}"><Location>{escape(location)}'
        f"</Location><Bucket>{BUCKET}</Bucket><Key>{encode_id('File', file.id)}</Key>"
        f"<ETag>&quot;{file.sha256}&quot;</ETag></CompleteMultipartUploadResult>",
    )


ROUTES = [Route(PATHS["multipart"] + "{token}", control, methods=["GET", "POST", "DELETE"])]
