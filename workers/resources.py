"""Every long-lived client a Depot process holds, opened and closed in one place.

The API's lifespan, ``depot scheduler``, the CLI and each worker's event loop
open theirs with :func:`open_resources`; a :class:`Resources` is what they
get: the database engine and its sessions, Redis, storage, the event log and
the handle jobs are sent through. Clients are closed in one order, the
reverse of the dependencies between them: the jobs handle (whose embedded
worker threads still use the rest) first, then the event log, storage, the
database and Redis last.

Clients belong to the event loop that opened them (database and Redis
connections, S3 sessions), so each loop opens its own — except what only
exists in this process's memory, which must be one object for every loop of
the process or the loops would not see each other's data: the embedded event
log (the API's subscribers hear what worker threads announce) and memory
storage (tests). Those travel as :class:`Shared`:

    async with open_resources(settings) as api:            # the API's loop
        ...
    async with open_resources(settings, shared=api.shared) as worker:  # another loop
        ...

Only the opener of a client closes it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from core.db import SessionMaker, create_engine, create_sessionmaker
from core.eventlog import EventLog, open_event_log
from core.redis_client import open_redis
from core.settings import Settings
from storage import Storage, open_storage
from workers.broker import Jobs, sender


@dataclass(frozen=True)
class Shared:
    """Clients another event loop of this process opened, to use here as they are.

    ``events`` and ``storage`` are the in-memory ones (see the module's
    docstring); ``jobs`` is a broker handle that already exists, such as the
    one a worker process runs.
    """

    events: EventLog | None = None
    storage: Storage | None = None
    jobs: Jobs | None = None


@dataclass(frozen=True)
class Resources:
    """The long-lived clients of one event loop; see :func:`open_resources`."""

    settings: Settings
    engine: AsyncEngine
    sessionmaker: SessionMaker
    redis: Redis | None
    storage: Storage
    events: EventLog
    jobs: Jobs
    # What a second loop of this process takes from this one (the in-memory clients).
    shared: Shared


# Builds the jobs handle from the in-memory clients it may hand to its worker threads.
JobsOpener = Callable[[Settings, Shared], Jobs]


@contextlib.asynccontextmanager
async def open_resources(
    settings: Settings,
    *,
    shared: Shared | None = None,
    jobs: JobsOpener | None = None,
) -> AsyncIterator[Resources]:
    """Open the clients ``settings`` name, on this event loop; close them on exit.

    ``shared``: what another loop of this process already opened (used, not
    closed). ``jobs``: how to build the jobs handle unless ``shared`` has one; by
    default it only sends (over Redis, or into a memory queue no worker
    reads) — the API's embedded mode passes one that runs them in threads.
    """
    shared = shared or Shared()
    async with contextlib.AsyncExitStack() as stack:
        # Pushed in dependency order; the stack closes them in reverse.
        redis: Redis | None = None
        if settings.redis_url is not None:
            redis = open_redis(settings.redis_url)
            stack.push_async_callback(redis.aclose)
        engine = create_engine(settings)
        stack.push_async_callback(engine.dispose)
        storage = shared.storage
        if storage is None:
            storage = open_storage(settings.storage_url)
            stack.push_async_callback(storage.aclose)
        events = shared.events
        if events is None:
            events = open_event_log(redis, prefix=settings.redis_prefix)
            stack.push_async_callback(events.aclose)
        in_memory = Shared(
            events=events if redis is None else None,
            storage=storage if urlsplit(settings.storage_url).scheme == "memory" else None,
        )
        handle = shared.jobs
        if handle is None:
            handle = jobs(settings, in_memory) if jobs is not None else sender(settings)
            stack.push_async_callback(handle.aclose)
        yield Resources(
            settings=settings,
            engine=engine,
            sessionmaker=create_sessionmaker(engine),
            redis=redis,
            storage=storage,
            events=events,
            jobs=handle,
            shared=replace(in_memory, jobs=handle),
        )
