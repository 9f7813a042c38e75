"""``GET /metrics``: the Prometheus scrape on the API's own port.

Open in development. With ``DEPOT_METRICS_TOKEN`` set it answers only
``Authorization: Bearer <token>`` (401 otherwise); in production without a
token it is a 404, as if it did not exist: metrics name the routes, the job
kinds and how busy the service is.
"""

from __future__ import annotations

import asyncio
import hmac

import structlog
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from core import jobs
from core.metrics import JobCounts, scrape
from core.settings import Settings

logger = structlog.get_logger("depot.metrics")

# A scrape waits this long for the job counts, then goes on without them.
JOB_COUNTS_TIMEOUT_S = 2.0


def _refusal(request: Request, settings: Settings) -> Response | None:
    token = settings.metrics_token
    if token is None:
        return PlainTextResponse("Not Found", 404) if settings.is_production else None
    expected = f"Bearer {token.get_secret_value()}".encode()
    given = request.headers.get("authorization", "").encode()
    if hmac.compare_digest(given, expected):
        return None
    return PlainTextResponse(
        "Send Authorization: Bearer <DEPOT_METRICS_TOKEN>.",
        401,
        headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
    )


async def metrics(request: Request) -> Response:
    """Every family, the job gauges read from the database at this scrape."""
    settings: Settings = request.state.settings
    refused = _refusal(request, settings)
    if refused is not None:
        return refused
    counts: JobCounts | None = None
    try:
        async with asyncio.timeout(JOB_COUNTS_TIMEOUT_S), request.state.sessionmaker() as db:
            counts = await jobs.count_unfinished(db)
    except Exception as exc:  # noqa: BLE001 - the other families are worth answering with
        logger.warning("job counts unavailable for /metrics", error=str(exc))
    return Response(scrape(counts), media_type=CONTENT_TYPE_LATEST)
