"""Reachability checks for the services Depot depends on.

Shared by ``/readyz`` and ``depot check``; each raises with a readable reason.
A probe that does not answer within ``PROBE_TIMEOUT_S`` fails.
"""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from core import mail
from core.settings import Settings
from storage.base import Storage

PROBE_TIMEOUT_S = 3.0


async def probe_database(engine: AsyncEngine) -> None:
    async with asyncio.timeout(PROBE_TIMEOUT_S), engine.connect() as connection:
        await connection.execute(text("SELECT 1"))


async def probe_redis(client: Redis) -> None:
    async with asyncio.timeout(PROBE_TIMEOUT_S):
        await client.ping()


async def probe_storage(storage: Storage) -> None:
    async with asyncio.timeout(PROBE_TIMEOUT_S):
        await storage.probe()


async def probe_smtp(settings: Settings) -> None:
    """Greet the mail server of ``DEPOT_SMTP_URL`` (signing in is left to the first mail)."""
    async with asyncio.timeout(PROBE_TIMEOUT_S + 1):
        await mail.probe_smtp(settings, PROBE_TIMEOUT_S)


def describe(exc: BaseException) -> str:
    """A one-line reason, without the driver's multi-line noise."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    text_ = str(exc).strip().splitlines()
    reason = text_[0] if text_ else ""
    return f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__
