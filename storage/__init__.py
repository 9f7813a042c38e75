"""Where file bytes live: the ``Storage`` protocol and its backends, chosen by URL.

Storage knows its URL and nothing else of Depot's configuration: the links
local and memory storage hand out come from the caller (``Links``), which
owns the routes they lead to.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from storage.base import Links, NoLinks, SignedRequest, Stat, Storage
from storage.errors import ObjectNotFound, PermanentStorageError, StorageError, TooLarge

__all__ = [
    "Links",
    "ObjectNotFound",
    "PermanentStorageError",
    "SignedRequest",
    "Stat",
    "Storage",
    "StorageError",
    "TooLarge",
    "open_storage",
]


def open_storage(url: str, *, links: Links | None) -> Storage:
    """The backend ``url`` names: ``file://``, ``s3://`` or ``memory://``.

    ``links`` signs the download and upload URLs of local and memory storage;
    a process that serves no byte routes (a worker, the CLI) passes ``None``,
    and asking its storage for such a URL then fails loudly. S3 presigns its
    own and never uses it.
    """
    scheme = urlsplit(url).scheme
    route_links = NoLinks() if links is None else links
    if scheme == "memory":
        from storage.memory import MemoryStorage

        return MemoryStorage(route_links)
    if scheme == "file":
        from storage.local import LocalStorage, file_url_path

        return LocalStorage(file_url_path(url), route_links)
    if scheme == "s3":
        from storage.s3 import S3Storage, parse_s3_url

        return S3Storage(parse_s3_url(url))
    raise ValueError(f"unknown storage backend {scheme!r}")
