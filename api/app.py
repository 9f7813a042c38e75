"""The Starlette application, built in one place from plain lists.

Its lifespan owns the long-lived clients (the database engine, Redis) and
hands them to requests through the lifespan state.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypedDict

import structlog
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import RedirectResponse
from starlette.routing import Route, WebSocketRoute

from api.files import ROUTES as FILE_ROUTES
from api.graphql import GraphQLView
from api.health import healthz, readyz
from api.middleware import HEADER as REQUEST_ID_HEADER
from api.middleware import RequestIdMiddleware
from core.db import SessionMaker, create_engine, create_sessionmaker
from core.logging import configure_logging
from core.migrate import prepare_schema
from core.ratelimit import LoginLimiter, limiter_storage
from core.settings import Settings, load_settings
from schema import build_schema
from storage import Storage, open_storage

logger = structlog.get_logger("depot.app")


class State(TypedDict):
    """What every request finds in ``request.state``."""

    settings: Settings
    engine: AsyncEngine
    sessionmaker: SessionMaker
    redis: Redis | None
    login_limiter: LoginLimiter
    storage: Storage


def create_app(settings: Settings) -> Starlette:
    """Depot's ASGI application for ``settings``."""
    schema = build_schema(
        max_depth=settings.graphql_max_depth, max_tokens=settings.graphql_max_tokens
    )
    graphql = GraphQLView(schema, settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[State]:
        engine = create_engine(settings)
        redis = Redis.from_url(settings.redis_url) if settings.redis_url else None
        storage = open_storage(settings)
        try:
            await prepare_schema(engine, production=settings.is_production)
            logger.info("depot ready", environment=settings.environment)
            limiter = LoginLimiter(
                limiter_storage(settings.redis_url, redis),
                per_account=settings.login_limit_per_account,
                per_address=settings.login_limit_per_address,
            )
            yield State(
                settings=settings,
                engine=engine,
                sessionmaker=create_sessionmaker(engine),
                redis=redis,
                login_limiter=limiter,
                storage=storage,
            )
        finally:
            await storage.aclose()
            await engine.dispose()
            if redis is not None:
                await redis.aclose()

    middleware = [Middleware(RequestIdMiddleware)]
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


def create_app_from_env() -> Starlette:
    """Factory for ``uvicorn --factory``: settings and logging from the environment."""
    settings = load_settings()
    configure_logging(settings.log_level, json=settings.json_logs)
    return create_app(settings)
