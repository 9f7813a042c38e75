"""Brute-force protection for sign-in: failures limited per account and per address.

Counters live in memory in the embedded mode and in Redis when it is
configured, so every API replica shares them.
"""

from __future__ import annotations

import math
import time
from typing import Any

from limits import RateLimitItem, parse_many
from limits.aio.storage import MemoryStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string
from redis.asyncio import Redis

from core.errors import RateLimited


def limiter_storage(redis_url: str | None, redis: Redis | None) -> Storage:
    """Memory counters, or Redis ones on the app's own connection pool (closed with it)."""
    if redis_url is None or redis is None:
        return MemoryStorage()
    # limits types its options as scalars, but passes them on to redis-py as they are.
    options: dict[str, Any] = {"connection_pool": redis.connection_pool}
    storage = storage_from_string(f"async+{redis_url}", implementation="redispy", **options)
    assert isinstance(storage, Storage)
    return storage


class LoginLimiter:
    """Counts failed sign-ins; refuses further attempts once a limit is reached."""

    def __init__(self, storage: Storage, per_account: str, per_address: str) -> None:
        self._limiter = MovingWindowRateLimiter(storage)
        self._limits: dict[str, list[RateLimitItem]] = {
            "account": parse_many(per_account),
            "address": parse_many(per_address),
        }

    def _keys(self, account: str, address: str) -> list[tuple[RateLimitItem, str, str]]:
        keys = {"account": account, "address": address}
        return [(item, kind, keys[kind]) for kind, items in self._limits.items() for item in items]

    async def check(self, account: str, address: str) -> None:
        """Raise ``RATE_LIMITED`` with a retry hint if either limit is used up."""
        for item, kind, key in self._keys(account, address):
            if not await self._limiter.test(item, "login", kind, key):
                stats = await self._limiter.get_window_stats(item, "login", kind, key)
                retry_after = max(1, math.ceil(stats.reset_time - time.time()))
                raise RateLimited(
                    f"Too many failed sign-ins; try again in {retry_after} seconds.",
                    retry_after=retry_after,
                )

    async def failed(self, account: str, address: str) -> None:
        for item, kind, key in self._keys(account, address):
            await self._limiter.hit(item, "login", kind, key)
