"""Where file bytes live: the ``Storage`` protocol and its backends, chosen by URL."""

from __future__ import annotations

from urllib.parse import urlsplit

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
    raise NotImplementedError(f"storage backend {scheme!r} arrives with storage/local.py and s3.py")
