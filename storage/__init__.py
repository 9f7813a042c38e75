"""Where file bytes live: the ``Storage`` protocol and its backends, chosen by URL.

Storage knows its URL and nothing else of Depot's configuration. What it
cannot presign (every download; local and memory storage's uploads) clients
reach through Depot's own routes, whose ``Links`` the API hands out itself.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from storage.base import AppendInterrupted, Links, Part, SignedRequest, Stat, Storage
from storage.errors import ObjectNotFound, PermanentStorageError, StorageError, TooLarge

__all__ = [
    "AppendInterrupted",
    "Links",
    "ObjectNotFound",
    "Part",
    "PermanentStorageError",
    "SignedRequest",
    "Stat",
    "Storage",
    "StorageError",
    "TooLarge",
    "open_storage",
]


def open_storage(url: str) -> Storage:
    """The backend ``url`` names: ``file://``, ``s3://`` or ``memory://``."""
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        from storage.memory import MemoryStorage

        return MemoryStorage()
    if scheme == "file":
        from storage.local import LocalStorage, file_url_path

        return LocalStorage(file_url_path(url))
    if scheme == "s3":
        from storage.s3 import S3Storage, parse_s3_url

        return S3Storage(parse_s3_url(url))
    raise ValueError(f"unknown storage backend {scheme!r}")
