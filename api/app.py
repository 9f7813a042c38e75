"""The Starlette application, built in one place from plain lists.

Its lifespan opens the long-lived clients (:func:`workers.resources.open_resources`)
and hands them to requests through the lifespan state.
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

from api.drain import Drain
from api.files import PATHS, RouteLinks
from api.files import ROUTES as FILE_ROUTES
from api.graphiql import GraphiQL
from api.graphql import GraphQLView
from api.headers import SecurityHeadersMiddleware
from api.health import healthz, readyz
from api.metrics import metrics
from api.middleware import HEADER as REQUEST_ID_HEADER
from api.middleware import RequestIdMiddleware
from api.multipart_uploads import ROUTES as MULTIPART_ROUTES
from api.notifications import ROUTES as NOTIFICATION_ROUTES
from api.tus import TusRoutes
from api.variants import variant
from api.websocket import OpenSockets
from core import jobs as job_states
from core import tracing
from core.db import SessionMaker
from core.eventlog import EventLog
from core.links import LinkSigner
from core.logging import configure_logging
from core.migrate import prepare_schema
from core.ratelimit import Action, ActionLimit, ActionLimiter, LoginLimiter, limiter_storage
from core.settings import Settings, load_settings
from core.signins import SignIns
from core.time import utcnow
from schema import build_schema
from storage import Storage
from workers.broker import Jobs
from workers.lifecycle import embedded_jobs
from workers.resources import Resources, open_resources
from workers.scheduler import Maintenance
from workers.webhooks import Dispatcher

logger = structlog.get_logger("depot.app")

# What a page on another origin may send: GET and POST to /graphql, GET and
# HEAD to a download link, PUT to a direct-upload ticket, tus's POST,
# HEAD, PATCH, DELETE and OPTIONS (api.tus), and a multipart upload's GET,
# POST and DELETE (api.multipart_uploads). The preflight itself is answered
# by the middleware; any request header is allowed (tus's Upload-* and Tus-*).
CORS_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
# Response headers such a page may read: a download's name, validator, size
# and range; and tus's, for resumable uploads.
CORS_EXPOSED_HEADERS = [
    "Content-Disposition",
    "ETag",
    "Content-Length",
    "Content-Range",
    "Accept-Ranges",
    "Location",
    "Tus-Resumable",
    "Tus-Version",
    "Tus-Extension",
    "Tus-Max-Size",
    "Tus-Checksum-Algorithm",
    "Upload-Offset",
    "Upload-Length",
    "Upload-Expires",
    "Upload-Metadata",
    "Depot-Processing",
]


class State(TypedDict):
    """What every request finds in ``request.state``."""

    settings: Settings
    engine: AsyncEngine
    sessionmaker: SessionMaker
    redis: Redis | None
    login_limiter: LoginLimiter
    action_limiter: ActionLimiter
    sockets: OpenSockets
    storage: Storage
    links: RouteLinks
    events: EventLog
    signins: SignIns
    jobs: Jobs
    drain: Drain
    # Bounds how many image variants render at once (api/variants.py).
    variant_limiter: anyio.CapacityLimiter


def create_app(settings: Settings, drain: Drain | None = None) -> Starlette:
    """Depot's ASGI application for ``settings``.

    ``drain``: what ``/readyz`` reads to say this process is going away
    (:func:`create_draining_app` has SIGTERM begin it).
    """
    drain = drain or Drain()
    schema = build_schema(
        max_depth=settings.graphql_max_depth,
        max_tokens=settings.graphql_max_tokens,
        max_aliases=settings.graphql_max_aliases,
        max_directives=settings.graphql_max_directives,
        max_cost=settings.graphql_max_cost,
        introspection=settings.graphql_introspection,
        suggestions=settings.graphql_suggestions,
        traced=tracing.enabled(),
        metrics=settings.metrics_enabled,
    )
    ide = GraphiQL.load() if settings.graphiql else None
    graphql = GraphQLView(schema, settings, ide)
    links = RouteLinks(
        LinkSigner(settings.secret),
        str(settings.public_base_url),
        # In development, links lead back to wherever the page reached Depot.
        follow_request=not settings.is_production
        and "public_base_url" not in settings.model_fields_set,
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[State]:
        # Embedded, this process runs the jobs too (threads started by the first one sent).
        run_jobs = embedded_jobs if settings.redis_url is None else None
        async with open_resources(settings, jobs=run_jobs) as r:
            await prepare_schema(r.engine, production=settings.is_production)
            maintenance: Maintenance | None = None
            dispatcher: Dispatcher | None = None
            signins: SignIns | None = None
            try:
                if r.redis is None:
                    await _resend_unfinished(r)
                    # With Redis, `depot scheduler` does this; embedded, this process does.
                    maintenance = Maintenance(r)
                    await maintenance.start()
                    # With Redis, each `depot worker` does this.
                    dispatcher = Dispatcher(r)
                    dispatcher.start()
                logger.info("depot ready", environment=settings.environment)
                counters = limiter_storage(settings.redis_url, r.redis)
                limiter = LoginLimiter(
                    counters,
                    per_account_and_address=settings.login_limit_per_account_and_address,
                    per_address=settings.login_limit_per_address,
                    slowdown_per_account=settings.login_slowdown_per_account,
                    max_delay_seconds=settings.login_max_delay_seconds,
                )
                signins = SignIns(
                    r.events,
                    r.sessionmaker,
                    cache_seconds=settings.sign_in_cache_seconds,
                    recheck_seconds=settings.ws_auth_recheck_seconds,
                )
                yield State(
                    settings=settings,
                    engine=r.engine,
                    sessionmaker=r.sessionmaker,
                    redis=r.redis,
                    login_limiter=limiter,
                    action_limiter=ActionLimiter(counters, _action_limits(settings)),
                    sockets=OpenSockets(
                        per_user=settings.ws_connections_per_user,
                        per_address=settings.ws_connections_per_address,
                    ),
                    storage=r.storage,
                    links=links,
                    events=r.events,
                    signins=signins,
                    jobs=r.jobs,
                    drain=drain,
                    variant_limiter=anyio.CapacityLimiter(settings.variant_render_concurrency),
                )
            finally:
                if signins is not None:
                    await signins.aclose()
                if dispatcher is not None:
                    await dispatcher.stop()
                if maintenance is not None:
                    await maintenance.stop()

    # Starlette tries routes in order: the one nearly every request takes comes first.
    routes = [
        Route("/graphql", graphql),
        WebSocketRoute("/graphql", graphql),
        Route("/", lambda request: RedirectResponse("/graphql")),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        *([Route("/metrics", metrics)] if settings.metrics_enabled else []),
        *FILE_ROUTES,
        *NOTIFICATION_ROUTES,
        Route(PATHS["variant"] + "{token}", variant, methods=["GET", "HEAD"]),
        *TusRoutes().routes,
        *MULTIPART_ROUTES,
        *(ide.routes if ide is not None else []),
    ]
    middleware = [
        # Outermost, so the request id's log lines carry the server span's ids.
        *([_server_spans()] if tracing.enabled() else []),
        # The byte routes carry their credential in the path, which the access line hides.
        Middleware(RequestIdMiddleware, routes=routes, metrics=settings.metrics_enabled),
        Middleware(SecurityHeadersMiddleware, https=settings.public_base_url.scheme == "https"),
    ]
    if settings.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=settings.cors_origins,
                allow_methods=CORS_METHODS,
                allow_headers=["*"],
                expose_headers=[*CORS_EXPOSED_HEADERS, REQUEST_ID_HEADER],
                max_age=600,
            )
        )
    return Starlette(routes=routes, middleware=middleware, lifespan=lifespan)


def _action_limits(settings: Settings) -> dict[Action, ActionLimit]:
    """Each counted action's windows, from its settings."""
    return {
        Action.REGISTER: ActionLimit(per_address=settings.register_limit_per_address),
        Action.UPLOAD: ActionLimit(
            settings.upload_limit_per_user, settings.upload_limit_per_address
        ),
        Action.JOB: ActionLimit(settings.job_limit_per_user, settings.job_limit_per_address),
        Action.ACCESS_TOKEN: ActionLimit(
            settings.access_token_limit_per_user, settings.access_token_limit_per_address
        ),
        Action.REFRESH_FAILURE: ActionLimit(per_address=settings.refresh_failure_limit_per_address),
        Action.PASSWORD_FAILURE: ActionLimit(
            settings.password_failure_limit_per_user, settings.password_failure_limit_per_address
        ),
        Action.PASSWORD_RESET: ActionLimit(
            settings.password_reset_limit_per_account, settings.password_reset_limit_per_address
        ),
        Action.VERIFICATION_MAIL: ActionLimit(
            settings.verification_mail_limit_per_user, settings.verification_mail_limit_per_address
        ),
    }


async def _resend_unfinished(resources: Resources) -> None:
    """Send again every job the database holds as queued or running (the embedded mode).

    The in-memory queue starts empty, and a running job's worker was this
    process, now gone. Sending the first one starts the worker threads; with
    none due they wait for the first job started.
    """
    async with resources.sessionmaker() as db:
        await job_states.orphan_running(db)
        now = utcnow()
        due = await job_states.due_for_sending(db, resend_before=now, stale_before=now)
        if not due:
            return
        for job_id, kind in due:
            await resources.jobs.send(job_id, kind)
        await job_states.mark_sent(db, [job_id for job_id, _ in due])
    logger.info("queued jobs sent again", count=len(due))


def _server_spans() -> Middleware:
    """A server span per request and WebSocket (:class:`api.tracing.ServerSpans`).

    Imported only when tracing is on: the propagators load at import.
    """
    from api.tracing import ServerSpans

    return Middleware(ServerSpans)


def create_app_from_env() -> Starlette:
    """Factory for ``uvicorn --factory``: settings and logging from the environment."""
    return create_app(_settings_from_env())


def create_draining_app(settings: Settings) -> Starlette:
    """Factory for each process of ``depot serve``: SIGTERM drains it (see :mod:`api.drain`).

    Only uvicorn may call it, as its server starts (``factory=True``).
    """
    drain = Drain()
    drain.take_over_signals(settings.drain_delay_seconds)
    return create_app(settings, drain)


def create_draining_app_from_env() -> Starlette:
    """:func:`create_draining_app` for the processes of ``depot serve --workers N``."""
    return create_draining_app(_settings_from_env())


def _settings_from_env() -> Settings:
    settings = load_settings()
    configure_logging(settings.log_level, json=settings.json_logs)
    tracing.configure_tracing("depot-api")
    return settings
