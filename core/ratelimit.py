"""Rate limits: brute-force protection for sign-in, and counts of costly actions.

Sign-in (:class:`LoginLimiter`) follows OWASP's authentication cheat sheet:

- Failures are limited per account *and* address: one address guessing one
  account is refused (``RATE_LIMITED``) once it used up its attempts.
- Failures are limited per address, whatever the accounts.
- An account that many addresses fail on is slowed down, not locked: each
  attempt on it waits a delay that doubles with every further failure, up to
  a ceiling. Nobody can lock its owner out, and a correct password from an
  address that has not been failing still signs in.

Other actions that cost a password hash, a row or a job — registering,
uploading, starting jobs, creating access tokens, refused refreshes, wrong
current passwords — are counted per user and per address by
:class:`ActionLimiter`, with limits sized so that a person never meets them.

Counters live in memory in the embedded mode and in Redis when it is
configured, so every API replica shares them; both limiters share one store.
"""

from __future__ import annotations

import contextlib
import math
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

import structlog
from limits import RateLimitItem, parse, parse_many
from limits.aio.storage import MemoryStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string
from redis.asyncio import Redis
from redis.exceptions import RedisError

from core.errors import RateLimited

logger = structlog.get_logger("depot.ratelimit")


def limiter_storage(redis_url: str | None, redis: Redis | None) -> Storage:
    """Memory counters, or Redis ones on the app's own connection pool (closed with it)."""
    if redis_url is None or redis is None:
        return MemoryStorage()
    # limits types its options as scalars, but passes them on to redis-py as they are.
    options: dict[str, Any] = {"connection_pool": redis.connection_pool}
    storage = storage_from_string(f"async+{redis_url}", implementation="redispy", **options)
    assert isinstance(storage, Storage)
    return storage


# Counts an account's failures in the slow-down window without ever saturating.
_UNCOUNTED: Final = 1_000_000_000
# The first slowed-down attempt waits this long; each further failure doubles it.
FIRST_DELAY_SECONDS: Final = 0.25


class LoginLimiter:
    """Counts failed sign-ins: refuses a pair or an address past its limit, slows an account."""

    def __init__(
        self,
        storage: Storage,
        per_account_and_address: str,
        per_address: str,
        *,
        slowdown_per_account: str = "5/15minutes",
        max_delay_seconds: float = 10.0,
    ) -> None:
        self._limiter = MovingWindowRateLimiter(storage)
        self._limits: dict[str, list[RateLimitItem]] = {
            "pair": parse_many(per_account_and_address),
            "address": parse_many(per_address),
        }
        slowdown = parse(slowdown_per_account)
        self._slow_after = slowdown.amount
        self._account_window = type(slowdown)(_UNCOUNTED, slowdown.multiples)
        self._max_delay = max_delay_seconds

    def _keys(self, account: str, address: str) -> list[tuple[RateLimitItem, str, str]]:
        keys = {"pair": f"{account}|{address}", "address": address}
        return [(item, kind, keys[kind]) for kind, items in self._limits.items() for item in items]

    async def check(self, account: str, address: str) -> float:
        """Raise ``RATE_LIMITED`` with a retry hint if the pair's or the address's limit
        is used up; else the seconds this attempt must wait first (0 for most)."""
        for item, kind, key in self._keys(account, address):
            if not await self._limiter.test(item, "login", kind, key):
                stats = await self._limiter.get_window_stats(item, "login", kind, key)
                retry_after = max(1, math.ceil(stats.reset_time - time.time()))
                raise RateLimited(
                    f"Too many failed sign-ins; try again in {retry_after} seconds.",
                    retry_after=retry_after,
                )
        stats = await self._limiter.get_window_stats(
            self._account_window, "login", "account", account
        )
        failures = _UNCOUNTED - stats.remaining
        if failures < self._slow_after:
            return 0.0
        return float(min(self._max_delay, FIRST_DELAY_SECONDS * 2 ** (failures - self._slow_after)))

    async def failed(self, account: str, address: str) -> None:
        for item, kind, key in self._keys(account, address):
            await self._limiter.hit(item, "login", kind, key)
        await self._limiter.hit(self._account_window, "login", "account", account)


class Action(StrEnum):
    """What :class:`ActionLimiter` counts: each a field (or a field's failures) of the API."""

    REGISTER = "register"  # register, per address
    UPLOAD = "upload"  # uploadFile, createUpload, createMultipartUpload, tus creation
    JOB = "job"  # startJob and retryJob
    ACCESS_TOKEN = "access_token"  # noqa: S105 - createAccessToken
    REFRESH_FAILURE = "refresh_failure"  # refreshSession refused, per address
    PASSWORD_FAILURE = "password_failure"  # noqa: S105 - changePassword, wrong current password
    # requestPasswordReset and sendPasswordReset; "per user" is per address asked
    # for, whether or not an account has it.
    PASSWORD_RESET = "password_reset"  # noqa: S105
    VERIFICATION_MAIL = "verification_mail"  # resendVerification and changeEmail


@dataclass(frozen=True, slots=True)
class ActionLimit:
    """An action's limits in ``limits`` notation; None where it is not counted that way."""

    per_user: str | None = None
    per_address: str | None = None


class ActionLimiter:
    """Counts actions per user and per address, each in windows of its own.

    A resolver calls :meth:`hit` once per field it resolves, so aliases and
    batched operations count one each. Failures-only limits (a refresh token
    or a current password that was wrong) :meth:`check` before the attempt and
    count with :meth:`failed` after it, as :class:`LoginLimiter` does. Each
    call costs one counter operation per window (a dict lookup in memory, one
    Redis round trip with Redis).
    """

    def __init__(self, storage: Storage, limits: Mapping[Action, ActionLimit]) -> None:
        self._limiter = MovingWindowRateLimiter(storage)
        self._limits = {
            action: (
                parse_many(limit.per_user) if limit.per_user else [],
                parse_many(limit.per_address) if limit.per_address else [],
            )
            for action, limit in limits.items()
        }

    def _keys(
        self, action: Action, user: uuid.UUID | str | None, address: str
    ) -> list[tuple[RateLimitItem, str, str]]:
        per_user, per_address = self._limits.get(action, ([], []))
        keys = [(item, "address", address) for item in per_address]
        if user is not None:
            keys += [(item, "user", str(user)) for item in per_user]
        return keys

    async def _refuse(self, item: RateLimitItem, action: Action, kind: str, key: str) -> None:
        stats = await self._limiter.get_window_stats(item, action.value, kind, key)
        retry_after = max(1, math.ceil(stats.reset_time - time.time()))
        raise RateLimited(
            f"Too many requests ({_WHAT[action]}); try again in {retry_after} seconds.",
            retry_after=retry_after,
        )

    async def hit(self, action: Action, *, user: uuid.UUID | str | None, address: str) -> None:
        """Count one ``action``; ``RATE_LIMITED`` once one of its windows is used up.

        ``user`` is who acts, or, for an action on an account nobody signed in
        to (a password reset), the account's normalised address.

        Each window is tested and counted in one atomic step, so concurrent
        requests cannot all slip through between a test and a count.
        """
        with _unless_unreachable(action):
            for item, kind, key in self._keys(action, user, address):
                if not await self._limiter.hit(item, action.value, kind, key):
                    await self._refuse(item, action, kind, key)

    async def check(self, action: Action, *, user: uuid.UUID | None, address: str) -> None:
        """``RATE_LIMITED`` if the failures of ``action`` used up a window; counts nothing."""
        with _unless_unreachable(action):
            for item, kind, key in self._keys(action, user, address):
                if not await self._limiter.test(item, action.value, kind, key):
                    await self._refuse(item, action, kind, key)

    async def failed(self, action: Action, *, user: uuid.UUID | None, address: str) -> None:
        """Count one failure of ``action``."""
        with _unless_unreachable(action):
            for item, kind, key in self._keys(action, user, address):
                await self._limiter.hit(item, action.value, kind, key)


@contextlib.contextmanager
def _unless_unreachable(action: Action) -> Iterator[None]:
    """Let the action through, uncounted, while Redis (holding the counters) is down.

    These limits bound what one client can spend, not who may act: an outage
    of the counters must not stop every upload and job (they queue and resume
    as usual), so they fail open, with a warning.
    """
    try:
        yield
    except (RedisError, OSError) as exc:
        logger.warning(
            "rate-limit counters unreachable; not counted", action=action.value, error=str(exc)
        )


_WHAT: Final = {
    Action.REGISTER: "accounts registered",
    Action.UPLOAD: "uploads",
    Action.JOB: "jobs started",
    Action.ACCESS_TOKEN: "access tokens created",
    Action.REFRESH_FAILURE: "refused session refreshes",
    Action.PASSWORD_FAILURE: "wrong current passwords",
    Action.PASSWORD_RESET: "password reset mails",
    Action.VERIFICATION_MAIL: "verification mails",
}
