"""The Starlette application, built in one place from plain lists.

Its lifespan owns the long-lived clients (the database engine, Redis) and
hands them to requests through the lifespan state.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypedDict

import anyio
import structlog
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import RedirectResponse
from starlette.routing import Route, WebSocketRoute

from api.files import ROUTES as FILE_ROUTES
from api.files import RouteLinks
from api.graphql import GraphQLView
from api.headers import SecurityHeadersMiddleware
from api.health import healthz, readyz
from api.middleware import HEADER as REQUEST_ID_HEADER
from api.middleware import RequestIdMiddleware
from core import jobs as job_states
from core.db import SessionMaker, create_engine, create_sessionmaker
from core.events import EventLog, open_event_log
from core.links import LinkSigner
from core.logging import configure_logging
from core.migrate import prepare_schema
from core.ratelimit import LoginLimiter, limiter_storage
from core.redis_client import open_redis
from core.settings import Settings, load_settings
from core.time import utcnow
from schema import build_schema
from storage import Storage, open_storage
from workers.broker import Jobs, Worker, embedded_jobs, redis_jobs
from workers.runtime import Runtime
from workers.scheduler import Maintenance

logger = structlog.get_logger("depot.app")


class State(TypedDict):
    """What every request finds in ``request.state``."""

    settings: Settings
    engine: AsyncEngine
    sessionmaker: SessionMaker
    redis: Redis | None
    login_limiter: LoginLimiter
    storage: Storage
    links: RouteLinks
    events: EventLog
    jobs: Jobs


def create_app(settings: Settings) -> Starlette:
    """Depot's ASGI application for ``settings``."""
    schema = build_schema(
        max_depth=settings.graphql_max_depth,
        max_tokens=settings.graphql_max_tokens,
        max_aliases=settings.graphql_max_aliases,
        max_directives=settings.graphql_max_directives,
        max_cost=settings.graphql_max_cost,
    )
    graphql = GraphQLView(schema, settings)
    links = RouteLinks(LinkSigner(settings.secret), str(settings.public_base_url))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[State]:
        engine = create_engine(settings)
        redis = open_redis(settings.redis_url) if settings.redis_url else None
        storage = open_storage(settings.storage_url, links=links)
        events = open_event_log(redis)
        sessionmaker = create_sessionmaker(engine)
        worker: Worker | None = None
        jobs: Jobs | None = None
        maintenance: Maintenance | None = None
        try:
            await prepare_schema(engine, production=settings.is_production)
            if redis is None:
                jobs, worker = await _start_embedded_jobs(settings, sessionmaker, storage, events)
                # With Redis, `depot scheduler` does this; embedded, this process does.
                maintenance = Maintenance(settings, sessionmaker, storage, events, jobs.send)
                await maintenance.start()
            else:
                jobs = redis_jobs(settings)
            logger.info("depot ready", environment=settings.environment)
            limiter = LoginLimiter(
                limiter_storage(settings.redis_url, redis),
                per_account_and_address=settings.login_limit_per_account_and_address,
                per_address=settings.login_limit_per_address,
                slowdown_per_account=settings.login_slowdown_per_account,
                max_delay_seconds=settings.login_max_delay_seconds,
            )
            yield State(
                settings=settings,
                engine=engine,
                sessionmaker=sessionmaker,
                redis=redis,
                login_limiter=limiter,
                storage=storage,
                links=links,
                events=events,
                jobs=jobs,
            )
        finally:
            if maintenance is not None:
                await maintenance.stop()
            if worker is not None:
                await anyio.to_thread.run_sync(worker.stop)
            elif jobs is not None:
                jobs.broker.close()
            await events.aclose()
            await storage.aclose()
            await engine.dispose()
            if redis is not None:
                await redis.aclose()

    middleware = [
        Middleware(RequestIdMiddleware),
        Middleware(SecurityHeadersMiddleware, https=settings.public_base_url.scheme == "https"),
    ]
    if settings.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=settings.cors_origins,
                allow_methods=["GET", "POST"],
                allow_headers=["*"],
                expose_headers=[REQUEST_ID_HEADER],
                max_age=600,
            )
        )
    routes = [
        Route("/", lambda request: RedirectResponse("/graphql")),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/graphql", graphql),
        WebSocketRoute("/graphql", graphql),
        *FILE_ROUTES,
    ]
    return Starlette(routes=routes, middleware=middleware, lifespan=lifespan)


async def _start_embedded_jobs(
    settings: Settings, sessionmaker: SessionMaker, storage: Storage, events: EventLog
) -> tuple[Jobs, Worker | None]:
    """Run jobs in this process's own worker threads (the embedded mode).

    The in-memory queue starts empty, so every job the database holds as
    queued or running (its worker was this process, now gone) is sent again.
    """
    # The worker opens its own database and storage clients on its own event
    # loop; memory storage (tests) exists only as this one object.
    shared_storage = storage if settings.storage_url.startswith("memory:") else None
    jobs = embedded_jobs(Runtime(settings, storage=shared_storage, events=events))
    worker = Worker(jobs, settings.worker_threads)
    if not await anyio.to_thread.run_sync(worker.start):
        logger.warning("another app in this process runs the embedded worker; jobs wait here")
        return jobs, None
    async with sessionmaker() as db:
        await job_states.orphan_running(db)
        now = utcnow()
        due = await job_states.due_for_sending(db, resend_before=now, stale_before=now)
        for job_id, kind in due:
            jobs.send_now(job_id, kind)
        await job_states.mark_sent(db, [job_id for job_id, _ in due])
    if due:
        logger.info("queued jobs sent again", count=len(due))
    return jobs, worker


def create_app_from_env() -> Starlette:
    """Factory for ``uvicorn --factory``: settings and logging from the environment."""
    settings = load_settings()
    configure_logging(settings.log_level, json=settings.json_logs)
    return create_app(settings)
