"""The Storage protocol: where file bytes live, behind one small interface.

Keys are opaque strings chosen by Depot (``u/<user id>/<uuid>``, or
``u/<user id>/j/<job id>/<uuid>`` for a job's outputs), never derived from a
user's path. Every backend makes a write visible only once it
is complete, so no reader ever sees half an object, and leaves nothing
behind when the bytes it is given fail midway.

An object may also be written in pieces, over many calls and processes (a
resumable upload): ``start_append``, then ``append`` as pieces arrive, then
``finish_append`` makes it visible at once (or ``abort_append`` drops it).
Between calls, what was appended is durable; the caller keeps the offset and
the handle.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from storage.errors import PermanentStorageError


@dataclass(frozen=True)
class Stat:
    size: int
    etag: str
    modified_at: datetime


@dataclass(frozen=True)
class Part:
    """One part a client sent of a multipart object (S3): its number, size and ETag."""

    number: int
    size: int
    etag: str


@dataclass(frozen=True)
class SignedRequest:
    """How a client sends bytes straight to storage: method, URL and the headers to send."""

    url: str
    method: str
    headers: dict[str, str] = field(default_factory=dict)
    expires_at: datetime | None = None


Tap = Callable[[Sequence[bytes]], None]
"""Shown every block of a put's bytes, in order, before ``put`` returns: hashing rides
along with storage's own handling of them. Local storage calls it in the worker thread
that writes the block (``hashlib`` lets go of the GIL, so the event loop goes on
receiving meanwhile); memory and S3 call it as the chunks arrive."""


class Links(Protocol):
    """Signed links to Depot's byte routes (``api.files``), for what storage cannot presign.

    Every download link is one of these, whatever the backend: the route
    checks the file and the credential on each request, then streams the
    bytes or (S3) redirects to a short-lived presigned URL. Uploads to local
    and memory storage, which presign nothing (``upload_request`` is None),
    go through one too. Storage never holds these: which routes, paths and
    host are the API's to say, per request.
    """

    def download(
        self, key: str, *, filename: str, content_type: str, expires_at: datetime, credential: str
    ) -> str:
        """A URL that serves ``key`` as ``filename`` until ``expires_at``, while
        ``credential`` (``core.downloads.credential_of``) stays live."""
        ...

    def upload(self, key: str, *, size: int, expires_at: datetime) -> str:
        """A URL that takes a PUT of exactly ``size`` bytes for ``key`` until ``expires_at``."""
        ...

    def variant(
        self, key: str, spec: dict[str, str | int], *, expires_at: datetime, credential: str
    ) -> str:
        """A URL that serves an image variant (``spec``) of ``key``'s file, checked
        like a download link."""
        ...

    def multipart(
        self, upload: str, *, owner: str, operation: str, expires_at: datetime, credential: str
    ) -> str:
        """A URL that answers one S3 request (``operation``, ``core.multipart_uploads``)
        of ``owner``'s multipart upload ``upload`` as S3 would, until ``expires_at``."""
        ...


class AppendInterrupted(Exception):
    """The chunks given to ``Storage.append`` failed midway; ``size`` bytes are now kept.

    Raised from the chunks' own error, when the caller asked to keep what
    arrived (``keep_partial``): ``size`` is the object's new length, at least
    the offset the append started from.
    """

    def __init__(self, size: int) -> None:
        super().__init__(f"interrupted; {size} bytes kept")
        self.size = size


def check_prefix(prefix: str) -> str:
    """``prefix`` if it names a whole "directory" of keys; ``ValueError`` otherwise.

    A prefix must end with ``/`` and be made of key segments, so a bug can
    never turn ``delete_prefix`` into wiping the bucket (``""``) or a user's
    other files (``u/ab`` also matches ``u/abc…``).
    """
    segments = prefix.split("/")[:-1]
    if (
        not prefix.endswith("/")
        or "\\" in prefix
        or "\0" in prefix
        or any(segment in ("", ".", "..") for segment in segments)
    ):
        raise ValueError(f"not a storage prefix (non-empty, ending with '/'): {prefix!r}")
    return prefix


class ServedByDepot:
    """The part of a backend whose bytes no client reaches but through Depot's routes.

    Local disk and memory have no URL of their own to sign: downloads go
    through Depot's download route, uploads through its upload and tus routes.
    """

    async def download_url(
        self, key: str, *, filename: str, content_type: str, expires_in: timedelta
    ) -> str | None:
        """None: no client reaches these bytes but through Depot's download route."""
        return None

    async def upload_request(
        self, key: str, *, size: int, content_type: str, expires_in: timedelta
    ) -> SignedRequest | None:
        """None: clients send these bytes through Depot's upload route."""
        return None

    async def part_upload_request(
        self, key: str, handle: str, number: int, *, expires_in: timedelta
    ) -> SignedRequest | None:
        """None: clients send bytes through Depot's routes (tus appends them here)."""
        return None

    async def list_parts(self, key: str, handle: str) -> list[Part]:
        """None sent: clients cannot send parts here."""
        return []

    async def complete_parts(self, key: str, handle: str, parts: list[Part]) -> None:
        raise PermanentStorageError("clients cannot send parts to this storage")


class Storage(Protocol):
    async def put(
        self,
        key: str,
        chunks: AsyncIterable[bytes],
        *,
        max_size: int | None = None,
        tap: Tap | None = None,
    ) -> int:
        """Store ``chunks`` under ``key``; returns the number of bytes stored.

        The object appears only once every chunk is written. If ``chunks``
        raises, or goes past ``max_size`` (``TooLarge``), nothing is left
        behind and the error propagates. ``tap`` sees every byte stored, in
        order, by the time this returns (see :data:`Tap`).
        """
        ...

    def open(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """The bytes of ``key`` from ``start`` up to ``end`` (exclusive), in chunks.

        Raises ``ObjectNotFound`` on first iteration if there is no such key.
        """
        ...

    async def stat(self, key: str) -> Stat: ...

    async def copy(self, source: str, target: str) -> None:
        """Server-side copy; the bytes do not pass through Depot."""
        ...

    async def move(self, source: str, target: str) -> None:
        """Give ``source``'s object the key ``target`` (``ObjectNotFound`` if there is none).

        Inside storage: a rename on disk, a server-side copy and delete on S3.
        """
        ...

    async def delete(self, key: str) -> None:
        """Remove ``key``; a key that is already gone is not an error."""
        ...

    async def delete_prefix(self, prefix: str) -> int:
        """Remove every object whose key starts with ``prefix`` (which ends with ``/``).

        Also removes anything a write under it left unfinished (local temp
        files, S3 pending multipart uploads), which is how the bytes of a
        writer that died mid-write are reclaimed. Returns how many objects
        went; a prefix with nothing under it is not an error. ``ValueError``
        for an empty prefix or one without the trailing ``/`` (``check_prefix``).
        """
        ...

    async def download_url(
        self, key: str, *, filename: str, content_type: str, expires_in: timedelta
    ) -> str | None:
        """A presigned URL that serves ``key`` as an attachment named ``filename`` until it
        expires, or None when clients cannot reach storage itself (local, memory).

        Only Depot's download route asks, for a few seconds, once it has checked
        the link: clients are never given one, so none outlives the file.
        """
        ...

    async def upload_request(
        self, key: str, *, size: int, content_type: str, expires_in: timedelta
    ) -> SignedRequest | None:
        """A presigned request that lets a client write exactly ``size`` bytes to
        ``key``, or None when clients cannot reach storage itself (local, memory):
        then they send the bytes to Depot's upload route (``Links.upload``)."""
        ...

    async def start_append(self, key: str) -> str:
        """Begin an object at ``key`` to be written in pieces; returns its handle.

        Nothing is visible at ``key`` until ``finish_append``. The handle (an S3
        multipart upload id; empty elsewhere) is the caller's to keep and give back.
        """
        ...

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
        """Write ``chunks`` after the first ``offset`` bytes; returns the new length.

        ``offset`` is the length the last successful append returned (0 at
        first); bytes an unfinished call left past it are dropped. Past
        ``max_size`` more bytes, nothing of this call is kept (``TooLarge``).
        If ``chunks`` raise, nothing of this call is kept and the error
        propagates, or with ``keep_partial`` whatever arrived is kept and
        ``AppendInterrupted`` says how much. Calls for one key must not overlap.
        """
        ...

    async def finish_append(self, key: str, handle: str, size: int) -> None:
        """Make the ``size`` bytes appended visible at ``key``, at once; the pieces go."""
        ...

    async def abort_append(self, key: str, handle: str) -> None:
        """Drop an unfinished appended object and whatever it staged; gone already is fine."""
        ...

    async def part_upload_request(
        self, key: str, handle: str, number: int, *, expires_in: timedelta
    ) -> SignedRequest | None:
        """A presigned PUT of part ``number`` of the appended object ``key``, for a
        client to send straight to storage (S3), or None when clients cannot reach
        storage itself (local, memory)."""
        ...

    async def list_parts(self, key: str, handle: str) -> list[Part]:
        """The parts clients sent (``part_upload_request``) of ``key``, in order."""
        ...

    async def complete_parts(self, key: str, handle: str, parts: list[Part]) -> None:
        """Assemble the parts a client sent into the object at ``key``, visible at once.

        ``PermanentStorageError`` when they do not fit (an unknown part or ETag,
        a part under the minimum but the last); the object stays unfinished.
        """
        ...

    async def probe(self) -> None:
        """Raise ``StorageError`` unless storage can be used now (for readiness checks)."""
        ...

    async def aclose(self) -> None: ...
