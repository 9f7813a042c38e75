"""How a job attempt can end other than by succeeding, and which errors are worth retrying."""

from __future__ import annotations

import asyncio

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from storage.errors import StorageError


class JobFailed(Exception):
    """The job cannot succeed as asked (bad input, a corrupt file): fail it at once.

    The message is shown to the job's owner as its ``error``.
    """


class JobCancelled(Exception):
    """The owner cancelled the job; raised at its next progress point."""


class JobInterrupted(Exception):
    """Its worker is stopping and the job did not finish in the grace period; raised at
    its next progress point. The job goes back to the queue, the attempt not counted."""


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` says a service was unavailable, so a later attempt may succeed.

    Storage or database outages and timeouts are; bad input and bugs are not. A
    storage error says so itself (``storage.errors``): a missing object is not.
    """
    if isinstance(exc, StorageError):
        return exc.transient
    if isinstance(exc, RedisConnectionError | RedisTimeoutError | PoolTimeout):
        return True
    if isinstance(exc, OperationalError):
        return True
    if isinstance(exc, DBAPIError):
        return bool(exc.connection_invalidated)
    return isinstance(exc, ConnectionError | TimeoutError | asyncio.TimeoutError)
