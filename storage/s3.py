"""Storage in an S3 bucket, on AWS or any S3 endpoint (MinIO, Ceph, moto…).

Configured by ``s3://bucket?endpoint_url=…&region=…``; credentials come from
the standard AWS chain (``AWS_ACCESS_KEY_ID``… or an instance role), never
from the URL. ``public_endpoint_url=…`` names the endpoint as clients reach it,
for presigned URLs, when Depot reaches S3 by another name (``http://minio:9000``
inside compose, ``http://localhost:9000`` from the host).

A stream larger than one part goes up as a multipart upload, which is
aborted if the stream fails, so a failed write leaves neither an object nor
parts that are billed and never seen.

An appended object (a resumable upload) is one multipart upload kept open
across calls, whose parts are all exactly ``PART_SIZE`` but the last: the
part number of any offset follows from it, so the handle is the upload id
alone. Bytes past the last whole part (S3 takes no part under 5 MiB but the
last) are staged as a small object under ``<key>.append/``, named by the
length they bring the object to, and read back by the next append: an
append that is not kept never overwrites what was.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aioboto3
import aiohttp
import anyio
from botocore.config import Config  # type: ignore[import-untyped]
from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped]

from core.content import content_disposition
from core.time import utcnow
from storage.base import AppendInterrupted, Part, SignedRequest, Stat, Tap, check_prefix
from storage.errors import ObjectNotFound, PermanentStorageError, StorageError, TooLarge

PART_SIZE = 8 * 1024 * 1024
"""Bytes buffered per multipart part (S3 needs at least 5 MiB for all but the last)."""

CHUNK = 1024 * 1024
"""Bytes per chunk when streaming an object out."""

DELETE_BATCH = 1000
"""Keys per DeleteObjects request (S3 takes at most 1000), and per listed page."""

_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}
# What S3 says when the parts a client names cannot make an object.
_BAD_PARTS = {"InvalidPart", "InvalidPartOrder", "EntityTooSmall", "NoSuchUpload"}


@dataclass(frozen=True)
class S3Location:
    bucket: str
    endpoint_url: str | None = None
    region: str | None = None
    public_endpoint_url: str | None = None


def parse_s3_url(url: str) -> S3Location:
    """``s3://bucket?endpoint_url=http://minio:9000&region=us-east-1`` → its parts."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc or parts.path not in ("", "/"):
        raise ValueError(f"use s3://bucket?endpoint_url=…&region=…, not {url!r}")
    query = {name: values[-1] for name, values in parse_qs(parts.query).items()}
    unknown = set(query) - {"endpoint_url", "region", "public_endpoint_url"}
    if unknown:
        raise ValueError(f"unknown S3 URL options: {', '.join(sorted(unknown))}")
    return S3Location(
        parts.netloc,
        query.get("endpoint_url"),
        query.get("region"),
        query.get("public_endpoint_url"),
    )


@contextlib.contextmanager
def _errors(key: str) -> Iterator[None]:
    """S3's "no such key" becomes ObjectNotFound; any other S3 or network failure a
    (transient) StorageError."""
    try:
        yield
    except ClientError as exc:
        error = exc.response.get("Error", {})
        if error.get("Code") in _NOT_FOUND:
            raise ObjectNotFound(key) from None
        message = f"{error.get('Code')} {error.get('Message')}"
        raise StorageError(f"S3 refused {key!r}: {message}") from exc
    except (BotoCoreError, aiohttp.ClientError) as exc:
        raise StorageError(f"S3 unreachable for {key!r}: {exc}") from exc


class S3Storage:
    def __init__(self, location: S3Location) -> None:
        self._location = location
        self._session = aioboto3.Session()
        self._stack = contextlib.AsyncExitStack()
        self._clients: dict[str | None, Any] = {}
        self._lock = anyio.Lock()

    @property
    def bucket(self) -> str:
        return self._location.bucket

    async def _s3(self) -> Any:
        """The one client, opened on first use and kept until ``aclose``."""
        return await self._client_for(self._location.endpoint_url)

    async def _signer(self) -> Any:
        """The client that presigns URLs: for the public endpoint, if there is one."""
        return await self._client_for(
            self._location.public_endpoint_url or self._location.endpoint_url
        )

    async def _client_for(self, endpoint_url: str | None) -> Any:
        client = self._clients.get(endpoint_url)
        if client is not None:
            return client
        async with self._lock:
            if endpoint_url not in self._clients:
                config = Config(
                    signature_version="s3v4",
                    # Path-style works on every endpoint; virtual hosts need DNS set up.
                    s3={"addressing_style": "path" if endpoint_url else "auto"},
                    # Newer SDK checksums are not understood by every S3-compatible server.
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required",
                    retries={"mode": "standard"},
                )
                self._clients[endpoint_url] = await self._stack.enter_async_context(
                    self._session.client(
                        "s3",
                        endpoint_url=endpoint_url,
                        region_name=self._location.region,
                        config=config,
                    )
                )
            return self._clients[endpoint_url]

    async def put(
        self,
        key: str,
        chunks: AsyncIterable[bytes],
        *,
        max_size: int | None = None,
        tap: Tap | None = None,
    ) -> int:
        s3 = await self._s3()
        bucket = self._location.bucket
        size = 0
        buffer = bytearray()
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []
        try:
            async for chunk in chunks:
                size += len(chunk)
                if max_size is not None and size > max_size:
                    raise TooLarge(f"more than {max_size} bytes")
                if tap is not None:
                    tap((chunk,))
                buffer += chunk
                if len(buffer) < PART_SIZE:
                    continue
                with _errors(key):
                    if upload_id is None:
                        created = await s3.create_multipart_upload(Bucket=bucket, Key=key)
                        upload_id = created["UploadId"]
                    parts.append(await self._upload_part(key, upload_id, len(parts) + 1, buffer))
                buffer = bytearray()
            with _errors(key):
                if upload_id is None:
                    await s3.put_object(Bucket=bucket, Key=key, Body=bytes(buffer))
                    return size
                if buffer or not parts:
                    parts.append(await self._upload_part(key, upload_id, len(parts) + 1, buffer))
                await s3.complete_multipart_upload(
                    Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
                )
        except BaseException:
            if upload_id is not None:
                # Shielded: a cancelled put must still tell S3 to drop its parts.
                with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                    await s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
            raise
        return size

    async def _upload_part(
        self, key: str, upload_id: str, number: int, body: bytearray
    ) -> dict[str, Any]:
        s3 = await self._s3()
        response = await s3.upload_part(
            Bucket=self._location.bucket,
            Key=key,
            UploadId=upload_id,
            PartNumber=number,
            Body=bytes(body),
        )
        return {"PartNumber": number, "ETag": response["ETag"]}

    async def start_append(self, key: str) -> str:
        s3 = await self._s3()
        with _errors(key):
            created = await s3.create_multipart_upload(Bucket=self._location.bucket, Key=key)
        upload_id: str = created["UploadId"]
        return upload_id

    async def append(
        self,
        key: str,
        handle: str,
        offset: int,
        chunks: AsyncIterable[bytes],
        *,
        max_size: int,
        keep_partial: bool,
    ) -> int:
        """Whole parts go up as they fill; the rest is staged (one PUT) at the end.

        Costs one LIST of the staging prefix per call (dropping the tails of
        earlier calls), and a GET of the staged tail when ``offset`` is not at
        a part boundary.
        """
        number = offset // PART_SIZE + 1  # the part these bytes start filling
        buffer = bytearray()
        with _errors(key):
            await self._drop_tails(key, keep=offset)
            if offset % PART_SIZE:
                buffer += await self._read_tail(key, offset)
        received = 0
        try:
            async for chunk in chunks:
                received += len(chunk)
                if received > max_size:
                    raise TooLarge(f"more than {max_size} bytes")
                buffer += chunk
                while len(buffer) >= PART_SIZE:
                    with _errors(key):
                        await self._upload_part(key, handle, number, buffer[:PART_SIZE])
                    del buffer[:PART_SIZE]
                    number += 1
        except Exception as exc:
            if not keep_partial or isinstance(exc, (TooLarge, StorageError)):
                raise
            whole = (number - 1) * PART_SIZE
            kept = max(offset, whole)
            if buffer and whole + len(buffer) > kept:
                with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                    await self._stage_tail(key, whole + len(buffer), buffer)
                    kept = whole + len(buffer)
            raise AppendInterrupted(kept) from exc
        size = offset + received
        if buffer and received:
            with _errors(key):
                await self._stage_tail(key, size, buffer)
        return size

    def _tail_key(self, key: str, size: int) -> str:
        return f"{key}.append/tail-{size}"

    async def _stage_tail(self, key: str, size: int, body: bytearray) -> None:
        s3 = await self._s3()
        await s3.put_object(
            Bucket=self._location.bucket, Key=self._tail_key(key, size), Body=bytes(body)
        )

    async def _read_tail(self, key: str, size: int) -> bytes:
        s3 = await self._s3()
        try:
            response = await s3.get_object(
                Bucket=self._location.bucket, Key=self._tail_key(key, size)
            )
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND:
                raise PermanentStorageError(f"{key!r} has no staged bytes up to {size}") from None
            raise
        async with response["Body"] as body:
            tail: bytes = await body.read()
        if len(tail) != size % PART_SIZE:
            raise PermanentStorageError(f"{key!r} staged {len(tail)} bytes, not {size % PART_SIZE}")
        return tail

    async def _drop_tails(self, key: str, *, keep: int) -> None:
        """Delete the staged tails of earlier appends but the one ``keep`` bytes long."""
        s3 = await self._s3()
        listed = await s3.list_objects_v2(Bucket=self._location.bucket, Prefix=f"{key}.append/")
        stale = [
            item["Key"]
            for item in listed.get("Contents", [])
            if item["Key"] != self._tail_key(key, keep)
        ]
        if stale:
            await self._delete_batch(stale)

    async def finish_append(self, key: str, handle: str, size: int) -> None:
        """Upload the staged tail as the last part, then complete the upload."""
        s3 = await self._s3()
        bucket = self._location.bucket
        whole = size // PART_SIZE
        with _errors(key):
            if size % PART_SIZE or size == 0:
                tail = await self._read_tail(key, size) if size else b""
                await self._upload_part(key, handle, whole + 1, bytearray(tail))
            count = whole + (1 if size % PART_SIZE or size == 0 else 0)
            parts: list[dict[str, Any]] = []
            paginator = s3.get_paginator("list_parts")
            async for page in paginator.paginate(Bucket=bucket, Key=key, UploadId=handle):
                parts += [
                    {"PartNumber": part["PartNumber"], "ETag": part["ETag"]}
                    for part in page.get("Parts", [])
                    if part["PartNumber"] <= count
                ]
            parts.sort(key=lambda part: int(part["PartNumber"]))
            if [part["PartNumber"] for part in parts] != list(range(1, count + 1)):
                raise PermanentStorageError(f"{key!r} is missing parts of its {size} bytes")
            await s3.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=handle, MultipartUpload={"Parts": parts}
            )
        await self.delete_prefix(f"{key}.append/")

    async def abort_append(self, key: str, handle: str) -> None:
        with _errors(key):
            await self._abort(key, handle)
        await self.delete_prefix(f"{key}.append/")

    async def open(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        s3 = await self._s3()
        request: dict[str, Any] = {"Bucket": self._location.bucket, "Key": key}
        if end is not None and end <= start:
            await self.stat(key)  # an empty range of a missing object is still missing
            return
        if start or end is not None:
            last = "" if end is None else str(end - 1)
            request["Range"] = f"bytes={start}-{last}"
        try:
            with _errors(key):
                response = await s3.get_object(**request)
        except StorageError as exc:
            # Starting at or past the end: S3 says 416; the contract says no bytes.
            if isinstance(exc.__cause__, ClientError) and _code(exc.__cause__) == "InvalidRange":
                return
            raise
        body = response["Body"]
        async with body:  # releases the connection even if the reader stops early
            with _errors(key):
                async for chunk in body.iter_chunks(CHUNK):
                    yield chunk

    async def stat(self, key: str) -> Stat:
        s3 = await self._s3()
        with _errors(key):
            head = await s3.head_object(Bucket=self._location.bucket, Key=key)
        return Stat(
            size=head["ContentLength"],
            etag=head["ETag"],
            modified_at=head["LastModified"].astimezone(UTC),
        )

    async def copy(self, source: str, target: str) -> None:
        s3 = await self._s3()
        bucket = self._location.bucket
        with _errors(source):
            await s3.copy_object(
                Bucket=bucket, Key=target, CopySource={"Bucket": bucket, "Key": source}
            )

    async def move(self, source: str, target: str) -> None:
        # S3 has no rename; a single CopyObject takes objects up to 5 GiB.
        await self.copy(source, target)
        await self.delete(source)

    async def delete(self, key: str) -> None:
        s3 = await self._s3()
        with _errors(key):
            await s3.delete_object(Bucket=self._location.bucket, Key=key)

    async def delete_prefix(self, prefix: str) -> int:
        """Abort the prefix's pending multipart uploads, then delete its objects in batches.

        Uploads first: a dead writer's parts are billed but never listed as
        objects, and aborting them leaves no upload that could still complete.
        """
        check_prefix(prefix)
        s3 = await self._s3()
        bucket = self._location.bucket
        pages = {"Bucket": bucket, "Prefix": prefix, "PaginationConfig": {"PageSize": DELETE_BATCH}}
        with _errors(prefix):
            async for page in s3.get_paginator("list_multipart_uploads").paginate(**pages):
                for upload in page.get("Uploads", []):
                    await self._abort(upload["Key"], upload["UploadId"])
            deleted = 0
            batch: list[str] = []
            async for page in s3.get_paginator("list_objects_v2").paginate(**pages):
                batch += [item["Key"] for item in page.get("Contents", [])]
                while len(batch) >= DELETE_BATCH:
                    deleted += await self._delete_batch(batch[:DELETE_BATCH])
                    del batch[:DELETE_BATCH]
            if batch:
                deleted += await self._delete_batch(batch)
        return deleted

    async def _abort(self, key: str, upload_id: str) -> None:
        s3 = await self._s3()
        try:
            await s3.abort_multipart_upload(
                Bucket=self._location.bucket, Key=key, UploadId=upload_id
            )
        except ClientError as exc:
            if _code(exc) != "NoSuchUpload":  # completed or aborted since it was listed
                raise

    async def _delete_batch(self, keys: list[str]) -> int:
        """Delete up to 1000 keys in one request; a key S3 would not delete is a StorageError."""
        s3 = await self._s3()
        response = await s3.delete_objects(
            Bucket=self._location.bucket,
            Delete={"Objects": [{"Key": key} for key in keys], "Quiet": True},
        )
        errors = response.get("Errors", [])
        if errors:
            first = errors[0]
            raise StorageError(
                f"S3 kept {len(errors)} of {len(keys)} objects, e.g. {first.get('Key')!r}: "
                f"{first.get('Code')} {first.get('Message')}"
            )
        return len(keys)

    async def download_url(
        self, key: str, *, filename: str, content_type: str, expires_in: timedelta
    ) -> str:
        s3 = await self._signer()
        with _errors(key):
            url: str = await s3.generate_presigned_url(
                "get_object",
                Params={
                    "Bucket": self._location.bucket,
                    "Key": key,
                    "ResponseContentDisposition": content_disposition(filename),
                    "ResponseContentType": content_type,
                },
                ExpiresIn=int(expires_in.total_seconds()),
            )
        return url

    async def upload_request(
        self, key: str, *, size: int, content_type: str, expires_in: timedelta
    ) -> SignedRequest:
        s3 = await self._signer()
        expires_at = utcnow() + expires_in
        with _errors(key):
            url: str = await s3.generate_presigned_url(
                "put_object",
                Params={
                    "Bucket": self._location.bucket,
                    "Key": key,
                    "ContentType": content_type,
                    "ContentLength": size,
                },
                ExpiresIn=int(expires_in.total_seconds()),
            )
        headers = {"Content-Type": content_type, "Content-Length": str(size)}
        return SignedRequest(url, "PUT", headers, expires_at)

    async def part_upload_request(
        self, key: str, handle: str, number: int, *, expires_in: timedelta
    ) -> SignedRequest:
        s3 = await self._signer()
        with _errors(key):
            url: str = await s3.generate_presigned_url(
                "upload_part",
                Params={
                    "Bucket": self._location.bucket,
                    "Key": key,
                    "UploadId": handle,
                    "PartNumber": number,
                },
                ExpiresIn=int(expires_in.total_seconds()),
            )
        return SignedRequest(url, "PUT", {}, utcnow() + expires_in)

    async def list_parts(self, key: str, handle: str) -> list[Part]:
        s3 = await self._s3()
        parts: list[Part] = []
        with _errors(key):
            paginator = s3.get_paginator("list_parts")
            pages = paginator.paginate(Bucket=self._location.bucket, Key=key, UploadId=handle)
            async for page in pages:
                parts += [
                    Part(part["PartNumber"], part["Size"], part["ETag"])
                    for part in page.get("Parts", [])
                ]
        return sorted(parts, key=lambda part: part.number)

    async def complete_parts(self, key: str, handle: str, parts: list[Part]) -> None:
        s3 = await self._s3()
        listed = [{"PartNumber": part.number, "ETag": part.etag} for part in parts]
        try:
            await s3.complete_multipart_upload(
                Bucket=self._location.bucket,
                Key=key,
                UploadId=handle,
                MultipartUpload={"Parts": listed},
            )
        except ClientError as exc:
            if _code(exc) in _BAD_PARTS:
                message = exc.response.get("Error", {}).get("Message", "")
                raise PermanentStorageError(f"{_code(exc)}: {message}") from None
            with _errors(key):
                raise

    async def probe(self) -> None:
        """The bucket exists and these credentials may use it."""
        s3 = await self._s3()
        with _errors(self._location.bucket):
            await s3.head_bucket(Bucket=self._location.bucket)

    async def aclose(self) -> None:
        self._clients.clear()
        await self._stack.aclose()


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
