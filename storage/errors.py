"""What storage raises, in two families: worth retrying, or not.

    StorageError                 storage could not be used for the call (unreachable,
    │                            refusing, a disk error): transient
    └── PermanentStorageError    the call itself cannot succeed: asking again gives the
        │                        same answer
        ├── ObjectNotFound       no object under that key
        └── TooLarge             a stream went past the bytes it was allowed

Every error says which family it is in through ``transient``, so a caller
that retries (a job attempt) asks ``exc.transient`` instead of listing
leaves. A caller that answers a client catches the leaf it can explain:
``ObjectNotFound`` is a 410 or a failed job, ``TooLarge`` a quota error.
"""

from __future__ import annotations

from typing import ClassVar


class StorageError(Exception):
    """Storage could not do what was asked just now; a later attempt may succeed.

    Raised as itself for an outage: a network error, S3 refusing, a disk error.
    """

    transient: ClassVar[bool] = True


class PermanentStorageError(StorageError):
    """The request itself cannot succeed: retrying it gives the same answer."""

    transient: ClassVar[bool] = False


class ObjectNotFound(PermanentStorageError):
    """No object under that key."""


class TooLarge(PermanentStorageError):
    """A stream went past the number of bytes it was allowed."""
