"""Storage in a dict, for tests: the same contract as the real backends."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterable, AsyncIterator

from core.time import utcnow
from storage.base import AppendInterrupted, ServedByDepot, Stat, Tap, check_prefix
from storage.errors import ObjectNotFound, PermanentStorageError, TooLarge

CHUNK = 64 * 1024


class MemoryStorage(ServedByDepot):
    """Objects in a dict; clients reach them only through Depot's routes."""

    def __init__(self) -> None:
        self._objects: dict[str, tuple[bytes, Stat]] = {}
        self._appending: dict[str, bytearray] = {}

    async def put(
        self,
        key: str,
        chunks: AsyncIterable[bytes],
        *,
        max_size: int | None = None,
        tap: Tap | None = None,
    ) -> int:
        data = bytearray()
        async for chunk in chunks:
            if tap is not None:
                tap((chunk,))
            data += chunk
            if max_size is not None and len(data) > max_size:
                raise TooLarge(f"more than {max_size} bytes")
        body = bytes(data)
        self._objects[key] = (body, Stat(len(body), hashlib.md5(body).hexdigest(), utcnow()))  # noqa: S324 - an ETag, like S3's
        return len(body)

    async def open(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        body = self._get(key)[0][start:end]
        for offset in range(0, len(body), CHUNK):
            yield body[offset : offset + CHUNK]

    def _get(self, key: str) -> tuple[bytes, Stat]:
        try:
            return self._objects[key]
        except KeyError:
            raise ObjectNotFound(key) from None

    async def stat(self, key: str) -> Stat:
        return self._get(key)[1]

    async def copy(self, source: str, target: str) -> None:
        body, stat = self._get(source)
        self._objects[target] = (body, Stat(stat.size, stat.etag, utcnow()))

    async def move(self, source: str, target: str) -> None:
        self._objects[target] = self._get(source)
        del self._objects[source]

    async def delete(self, key: str) -> None:
        self._objects.pop(key, None)

    async def delete_prefix(self, prefix: str) -> int:
        """Drop the keys under ``prefix``; an unfinished put only ever lived in its own frame."""
        check_prefix(prefix)
        for key in [key for key in self._appending if key.startswith(prefix)]:
            del self._appending[key]
        doomed = [key for key in self._objects if key.startswith(prefix)]
        for key in doomed:
            del self._objects[key]
        return len(doomed)

    async def start_append(self, key: str) -> str:
        self._appending[key] = bytearray()
        return ""

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
        staged = self._appending.get(key)
        if staged is None or len(staged) < offset:
            raise ObjectNotFound(key)
        del staged[offset:]
        received = bytearray()
        try:
            async for chunk in chunks:
                received += chunk
                if len(received) > max_size:
                    raise TooLarge(f"more than {max_size} bytes")
        except Exception as exc:
            if not keep_partial or isinstance(exc, TooLarge):
                raise
            staged += received
            raise AppendInterrupted(len(staged)) from exc
        staged += received
        return len(staged)

    async def finish_append(self, key: str, handle: str, size: int) -> None:
        staged = self._appending.get(key)
        if staged is None:
            raise ObjectNotFound(key)
        if len(staged) != size:
            raise PermanentStorageError(f"{key!r} holds {len(staged)} bytes, not {size}")
        body = bytes(self._appending.pop(key))
        self._objects[key] = (body, Stat(len(body), hashlib.md5(body).hexdigest(), utcnow()))  # noqa: S324 - an ETag, like S3's

    async def abort_append(self, key: str, handle: str) -> None:
        self._appending.pop(key, None)

    async def probe(self) -> None:
        """Always ready: the objects are in this process."""

    async def aclose(self) -> None:
        self._objects.clear()
        self._appending.clear()
