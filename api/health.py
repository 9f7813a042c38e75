"""``/healthz`` (the process answers) and ``/readyz`` (its services answer)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse

from core.probes import describe, probe_database, probe_redis, probe_storage

logger = structlog.get_logger("depot.health")


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    if request.state.drain.draining:
        # Going away (SIGTERM): out of the load balancer's rotation at once,
        # whatever the services say. See api/drain.py.
        return JSONResponse({"status": "draining"}, status_code=503)
    probes: dict[str, Awaitable[None]] = {
        "database": probe_database(request.state.engine),
        "storage": probe_storage(request.state.storage),
    }
    if request.state.redis is not None:
        probes["redis"] = probe_redis(request.state.redis)
    outcomes = await asyncio.gather(*probes.values(), return_exceptions=True)
    checks: dict[str, str] = {}
    for name, outcome in zip(probes, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            # The reason may name hosts: it goes to the log, not to the caller.
            logger.warning("readiness probe failed", service=name, reason=describe(outcome))
            checks[name] = "unavailable"
        else:
            checks[name] = "ok"
    ready = all(state == "ok" for state in checks.values())
    return JSONResponse(
        {"status": "ok" if ready else "unavailable", "checks": checks},
        status_code=200 if ready else 503,
    )
