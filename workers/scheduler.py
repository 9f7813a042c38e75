"""Running maintenance on a schedule: inside the API process, or as ``depot scheduler``.

:class:`Maintenance` runs :func:`workers.maintenance.run_all` every
``DEPOT_MAINTENANCE_INTERVAL_SECONDS`` (and once soon after it starts) with
APScheduler. With Redis, any number of schedulers may run, one per API
replica or ``depot scheduler`` process: only the one holding a lock in Redis
does the work, and it keeps the lock until it stops, so the runs of two
schedulers never fall in the same interval. Without Redis there is only the
one process, and no lock.

    async with open_resources(settings) as resources:
        maintenance = Maintenance(resources)
        await maintenance.start()
        ...
        await maintenance.stop()
"""

from __future__ import annotations

import asyncio
import logging
import signal
import uuid
from datetime import UTC, timedelta
from typing import Final

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger
from redis.asyncio import Redis
from redis.exceptions import RedisError

from core import notifications
from core.metrics import serve_metrics
from core.settings import Settings
from core.time import utcnow
from workers import mail
from workers.maintenance import UsageSuspects, run_all
from workers.metrics import HOST as METRICS_HOST
from workers.metrics import job_counts_on
from workers.resources import Resources, open_resources

logger = structlog.get_logger("depot.maintenance")


def lock_key(prefix: str) -> str:
    """The maintenance lock of an installation whose Redis names start with ``prefix``
    (``depot:maintenance:lock`` for the default prefix, as every release so far)."""
    return f"{prefix}:maintenance:lock"


# A holder that dies gives the lock up this long after its last renewal.
LOCK_TTL_SECONDS: Final = 30.0
LOCK_RENEW_SECONDS: Final = LOCK_TTL_SECONDS / 3
# The first run comes this soon after start (or after one interval, if shorter):
# not at once, so a process that restarts in a loop does not hammer the database.
FIRST_RUN_SECONDS: Final = 60.0
# How long ``stop`` lets a run in progress finish before interrupting it.
STOP_GRACE_SECONDS: Final = 5.0

# Compare-and-set: only the holder's token extends or deletes the lock.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisLock:
    """A lock in Redis that its holder keeps by renewing it before it expires."""

    def __init__(self, redis: Redis, key: str, ttl_seconds: float = LOCK_TTL_SECONDS):
        self._redis = redis
        self._key = key
        self._ttl_ms = int(ttl_seconds * 1000)
        self._token = uuid.uuid4().hex
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)
        self.held = False

    async def hold(self) -> bool:
        """Take the lock if it is free, or extend it if it is ours; whether we hold it now.

        Redis unreachable counts as not holding it: whoever holds it then is
        unknown, so the run is skipped.
        """
        try:
            taken = await self._redis.set(self._key, self._token, nx=True, px=self._ttl_ms)
            # Ours already (or still, after a connection error): extend it.
            self.held = bool(taken) or bool(
                await self._renew(keys=[self._key], args=[self._token, self._ttl_ms])
            )
        except (RedisError, OSError) as exc:
            logger.warning("maintenance lock unreachable", error=str(exc))
            self.held = False
        return self.held

    async def renew(self) -> None:
        """Extend the lock while it is held; notice when it was lost."""
        if self.held and not await self.hold():
            logger.warning("maintenance lock lost")

    async def release(self) -> None:
        """Give the lock up at once, so another scheduler takes over without waiting."""
        if not self.held:
            return
        self.held = False
        try:
            await self._release(keys=[self._key], args=[self._token])
        except (RedisError, OSError) as exc:
            logger.warning("maintenance lock not released; it expires by itself", error=str(exc))


class Maintenance:
    """Maintenance every ``settings.maintenance_interval_seconds``, on this event loop,
    with the clients of ``resources``.

    With Redis, only while holding the maintenance lock.
    """

    def __init__(self, resources: Resources) -> None:
        self._resources = resources
        self._settings = resources.settings
        redis = resources.redis
        self._lock = (
            RedisLock(redis, lock_key(self._settings.redis_prefix)) if redis is not None else None
        )
        self._scheduler: AsyncIOScheduler | None = None
        self._running: asyncio.Task[object] | None = None
        # Users whose usage looked off in the last run (see recount_usage).
        self._usage_suspects: UsageSuspects = {}

    async def start(self) -> None:
        if self._scheduler is not None:
            raise RuntimeError("maintenance is already started")
        interval = self._settings.maintenance_interval_seconds
        # APScheduler says at INFO each time it runs a job: every interval.
        logging.getLogger("apscheduler").setLevel(logging.WARNING)
        scheduler = AsyncIOScheduler(timezone=UTC)
        first = utcnow() + timedelta(seconds=min(interval, FIRST_RUN_SECONDS))
        # A run that is late still runs (once), never twice in a row.
        options = {"max_instances": 1, "coalesce": True, "misfire_grace_time": None}
        scheduler.add_job(
            self._tick,
            IntervalTrigger(seconds=interval, timezone=UTC),
            id="maintenance",
            next_run_time=first,
            **options,
        )
        if self._settings.mail_enabled:
            # Often enough that a notification goes out soon after its delay is up.
            scheduler.add_job(
                self._notify,
                IntervalTrigger(
                    seconds=self._settings.notification_delay_seconds / 4, timezone=UTC
                ),
                id="notifications",
                **options,
            )
        if self._lock is not None:
            scheduler.add_job(
                self._lock.renew,
                IntervalTrigger(seconds=LOCK_RENEW_SECONDS, timezone=UTC),
                id="maintenance-lock",
                **options,
            )
        scheduler.start()
        self._scheduler = scheduler
        logger.info(
            "maintenance scheduled", interval_seconds=interval, locked=self._lock is not None
        )

    async def _tick(self) -> None:
        if self._lock is not None and not await self._lock.hold():
            logger.debug("maintenance skipped: another scheduler holds the lock")
            return
        self._running = asyncio.current_task()
        try:
            resources = self._resources
            await run_all(
                resources.sessionmaker,
                resources.storage,
                resources.events,
                self._settings,
                resources.jobs.send,
                usage_suspects=self._usage_suspects,
            )
        except asyncio.CancelledError:
            # Only ``stop`` cancels a run, and this is the top of its task:
            # APScheduler would report it as the job crashing.
            logger.warning("maintenance interrupted by stop")
        finally:
            self._running = None

    async def _notify(self) -> None:
        """Ask for the notification mails that are due (:func:`core.notifications.sweep`)."""
        if self._lock is not None and not await self._lock.hold():
            return
        jobs = self._resources.jobs

        async def tell(user_id: uuid.UUID) -> None:
            await jobs.send_to(mail.DIGEST, str(user_id))

        try:
            await notifications.sweep(self._resources.sessionmaker, self._settings, tell)
        except Exception:
            logger.exception("notification sweep failed")

    async def stop(self) -> None:
        """Stop scheduling, let a run in progress finish briefly, and give the lock up."""
        scheduler, self._scheduler = self._scheduler, None
        if scheduler is None:
            return
        scheduler.pause()
        running = self._running
        if running is not None:
            _, pending = await asyncio.wait({running}, timeout=STOP_GRACE_SECONDS)
            if pending:
                running.cancel()
                await asyncio.wait({running})
        scheduler.shutdown(wait=False)
        await asyncio.sleep(0)  # AsyncIOScheduler shuts down in a loop callback
        if self._lock is not None:
            await self._lock.release()


class NeedsRedis(RuntimeError):
    """``depot scheduler`` was started without ``DEPOT_REDIS_URL``."""


async def serve(settings: Settings, *, metrics_port: int | None = None) -> None:
    """``depot scheduler``: run maintenance with its own clients until SIGTERM or SIGINT,
    serving its metrics on ``metrics_port`` when given (``workers.metrics``).

    The caller has prepared the database schema and the logging.
    """
    if settings.redis_url is None:
        raise NeedsRedis(
            "depot scheduler needs DEPOT_REDIS_URL (its jobs and events go through Redis); "
            "without Redis, `depot serve` runs maintenance itself."
        )
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    signals = (signal.SIGTERM, signal.SIGINT)
    for signum in signals:
        loop.add_signal_handler(signum, stopping.set)
    try:
        async with open_resources(settings) as resources:
            maintenance = Maintenance(resources)
            stop_metrics = None
            try:
                if metrics_port is not None:
                    counts = job_counts_on(loop, resources.sessionmaker)
                    stop_metrics = serve_metrics(metrics_port, METRICS_HOST, counts)
                await maintenance.start()
                await stopping.wait()
                logger.info("scheduler stopping")
            finally:
                if stop_metrics is not None:
                    # The server's thread may be waiting on this loop: stop it off the loop.
                    await asyncio.to_thread(stop_metrics)
                await maintenance.stop()
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)
