"""Where file bytes live: the ``Storage`` protocol and its backends, chosen by URL."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

from core.links import LinkSigner
from core.settings import Settings
from storage.base import (
    ObjectNotFound,
    SignedRequest,
    Stat,
    Storage,
    StorageError,
    TooLarge,
)

__all__ = [
    "ObjectNotFound",
    "SignedRequest",
    "Stat",
    "Storage",
    "StorageError",
    "TooLarge",
    "open_storage",
]


def open_storage(settings: Settings) -> Storage:
    """The backend ``DEPOT_STORAGE_URL`` names: ``file://``, ``s3://`` or ``memory://``."""
    links = LinkSigner(settings.secret, str(settings.public_base_url))
    scheme = urlsplit(settings.storage_url).scheme
    if scheme == "memory":
        from storage.memory import MemoryStorage

        return MemoryStorage(links)
    if scheme == "file":
        from storage.local import LocalStorage

        return LocalStorage(file_url_path(settings.storage_url), links)
    if scheme == "s3":
        from storage.s3 import S3Storage, parse_s3_url

        return S3Storage(parse_s3_url(settings.storage_url))
    raise ValueError(f"unknown storage backend {scheme!r}")


def file_url_path(url: str) -> Path:
    """The directory a ``file://`` URL names (``file:///srv/depot`` or ``file:relative``)."""
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise ValueError(f"file:// storage must be on this host, not {parts.netloc!r}")
    return Path(url2pathname(parts.path))
