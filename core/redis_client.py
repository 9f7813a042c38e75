"""How Depot connects to Redis: one client per process and event loop, retrying blips.

A command that meets a dropped connection (Redis restarted, a failover, an
idle connection closed by a proxy) is tried again on a fresh connection a few
times with a short backoff, instead of failing whoever sent it.
"""

from __future__ import annotations

from typing import Final

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff

from core import tracing

RETRIES: Final = 3


def open_redis(url: str) -> Redis:
    """A client for ``url`` whose commands survive a dropped connection."""
    client = Redis.from_url(
        url, retry=Retry(ExponentialWithJitterBackoff(cap=1.0, base=0.01), RETRIES)
    )
    if tracing.enabled():
        tracing.trace_redis(client)
    return client
