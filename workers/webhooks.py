"""Webhook deliveries on the Dramatiq side: the dispatcher, the actor, and the request.

:class:`Dispatcher` looks for due deliveries every ``DEPOT_WEBHOOK_POLL_SECONDS``
(:func:`core.webhook_deliveries.claim_due`) and sends each as one message to the
``depot.webhook`` actor — in ``depot worker`` processes, or in the API
process in the embedded mode. The actor (:func:`deliver`) makes one attempt:
it resolves the URL again and connects to the address it checked
(:mod:`core.webhook_targets`), follows no redirect, reads at most
``RESPONSE_LIMIT`` bytes of the answer and gives up after
``DEPOT_WEBHOOK_TIMEOUT_SECONDS`` in all; then records the outcome, which
queues the retry when one is due. No database connection is held while the
request is out.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from datetime import timedelta
from email.utils import parsedate_to_datetime
from typing import Final

import anyio
import httpx
import structlog

from core import webhook_deliveries as deliveries
from core.time import utcnow
from core.webhook_targets import Unresolvable, UnsafeTarget, resolve
from workers.resources import Resources

logger = structlog.get_logger("depot.webhooks")

ACTOR: Final = "depot.webhook"
# Bytes of a receiver's answer read at most (an excerpt is kept): it owes us a status only.
RESPONSE_LIMIT: Final = 4096
# Deliveries handed to the broker per look.
BATCH: Final = 100
USER_AGENT: Final = "Depot-Webhooks/1"


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds: a number of seconds, or an HTTP date."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return (parsedate_to_datetime(value) - utcnow()).total_seconds()
    except (TypeError, ValueError):
        return None


async def send(resources: Resources, attempt: deliveries.Attempt) -> deliveries.Result:
    """POST the attempt's body to its URL, safely; never raises for the receiver's faults."""
    settings = resources.settings
    started = time.monotonic()

    def elapsed() -> int:
        return int((time.monotonic() - started) * 1000)

    try:
        target = await resolve(
            attempt.url,
            allow_private=settings.webhook_allow_private_networks,
            require_https=settings.is_production,
        )
    except Unresolvable as exc:
        return deliveries.Result(None, elapsed(), error=str(exc), retry=True)
    except UnsafeTarget as exc:
        return deliveries.Result(None, elapsed(), error=str(exc))
    body = attempt.payload.encode()
    sent_headers = {
        **deliveries.headers(attempt.secret, attempt.message_id, int(time.time()), body),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        # Raw bytes only: a compressed answer could expand past any limit.
        "accept-encoding": "identity",
        "host": target.host_header,
    }
    try:
        with anyio.fail_after(settings.webhook_timeout_seconds):
            async with httpx.AsyncClient(
                timeout=settings.webhook_timeout_seconds, follow_redirects=False, trust_env=False
            ) as client:
                request = client.build_request(
                    "POST",
                    target.pinned_url,
                    content=body,
                    headers=sent_headers,
                    # TLS checks the certificate against the name, not the address.
                    extensions={"sni_hostname": target.host},
                )
                response = await client.send(request, stream=True)
                try:
                    excerpt = bytearray()
                    async for chunk in response.aiter_raw():
                        excerpt += chunk
                        if len(excerpt) >= RESPONSE_LIMIT:
                            break
                finally:
                    await response.aclose()
    except TimeoutError:
        return deliveries.Result(
            None,
            elapsed(),
            error=f"No answer within {settings.webhook_timeout_seconds:g} s.",
            retry=True,
        )
    except httpx.TimeoutException:
        return deliveries.Result(None, elapsed(), error="The request timed out.", retry=True)
    except httpx.HTTPError as exc:
        return deliveries.Result(None, elapsed(), error=f"{type(exc).__name__}: {exc}", retry=True)
    code = response.status_code
    return deliveries.Result(
        code,
        elapsed(),
        excerpt=bytes(excerpt[:RESPONSE_LIMIT]).decode("utf-8", errors="replace"),
        retry=code >= 500 or code == 429,
        retry_after=_retry_after(response.headers.get("retry-after"))
        if code in (429, 503)
        else None,
    )


async def deliver(resources: Resources, delivery_id: uuid.UUID) -> None:
    """One attempt of one delivery (the actor's body); safe to run twice for one message."""
    settings = resources.settings
    now = utcnow()
    # An attempt older than this lost its worker: another may take it over.
    lease_before = now - timedelta(seconds=settings.webhook_timeout_seconds * 2 + 30)
    async with resources.sessionmaker() as db:
        attempt = await deliveries.begin_attempt(
            db, delivery_id, now=now, lease_before=lease_before
        )
    if attempt is None:
        return
    result = await send(resources, attempt)
    logger.info(
        "webhook delivery attempted",
        delivery_id=str(delivery_id),
        status_code=result.status_code,
        error=result.error,
        duration_ms=result.duration_ms,
    )
    async with resources.sessionmaker() as db:
        disabled = await deliveries.record_attempt(db, settings, attempt, result, now=utcnow())
    if disabled is not None:
        logger.warning("webhook disabled after failing for too long", webhook_id=str(disabled.id))
        await deliveries.tell_disabled(resources.events, disabled)


class Dispatcher:
    """Hands due deliveries to the broker, every ``DEPOT_WEBHOOK_POLL_SECONDS``, on this loop.

    Costs one indexed query per look when nothing is due. Several dispatchers
    (workers, replicas) may run: each delivery is claimed by one.
    """

    def __init__(self, resources: Resources) -> None:
        self._resources = resources
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="depot-webhooks")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def dispatch(self) -> int:
        """Send what is due now; returns how many."""
        r = self._resources
        now = utcnow()
        # A message with the broker this long and still pending was lost (a Redis restart).
        resend_before = now - timedelta(seconds=r.settings.webhook_timeout_seconds * 2 + 60)
        async with r.sessionmaker() as db:
            due = await deliveries.claim_due(db, now=now, resend_before=resend_before, limit=BATCH)
        for delivery_id in due:
            await r.jobs.send_to(ACTOR, str(delivery_id))
        return len(due)

    async def _run(self) -> None:
        while True:
            try:
                while await self.dispatch() == BATCH:
                    pass
            except Exception:  # a look that failed is tried again next time
                logger.warning("webhook dispatch failed", exc_info=True)
            await asyncio.sleep(self._resources.settings.webhook_poll_seconds)
