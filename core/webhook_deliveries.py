"""Webhook deliveries: handing due ones out, each attempt, its retry, and disabling.

A dispatcher (:mod:`workers.webhooks`) hands due rows to the broker
(:func:`claim_due`); an actor makes the attempt (:func:`begin_attempt`, then
the HTTP request, then :func:`record_attempt`). A failed attempt that may be
retried is followed by a new row, due after an exponential backoff (or the
receiver's ``Retry-After``), until the retry window closes; a webhook failing
for longer than ``DEPOT_WEBHOOK_DISABLE_AFTER_SECONDS`` is disabled
(:func:`disable`).

Deliveries follow Standard Webhooks: headers ``webhook-id`` (the same for
every attempt of one event), ``webhook-timestamp`` and ``webhook-signature``
(``v1,`` and the base64 HMAC-SHA256 of ``<id>.<timestamp>.<body>`` under the
secret's bytes), as :func:`sign` computes them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from sqlalchemy import or_, update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from core import metrics, notifications
from core.eventlog import EventLog
from core.events import WebhookDisabled, announce
from core.models import DeliveryStatus, Webhook, WebhookDelivery
from core.settings import Settings
from core.time import utcnow

SECRET_PREFIX: Final = "whsec_"  # noqa: S105 - a prefix, not a secret
EXCERPT_CHARS: Final = 1024


# ----------------------------------------------------------------- signing


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header of ``body`` sent as ``message_id`` at ``timestamp``."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(secret: str, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt."""
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, message_id, timestamp, body),
    }


# ----------------------------------------------------------------- the sender's side


async def claim_due(
    db: AsyncSession, *, now: datetime, resend_before: datetime, limit: int
) -> list[uuid.UUID]:
    """Deliveries due now whose message is not with the broker; marks them sent; commits.

    One indexed SELECT (``status, due_at``), then one conditional UPDATE per
    row, so two dispatchers never both send one (a message that looks lost,
    sent before ``resend_before`` and still pending, is sent again).
    """
    unsent = or_(
        col(WebhookDelivery.sent_at).is_(None), col(WebhookDelivery.sent_at) < resend_before
    )
    found = await db.exec(
        select(WebhookDelivery.id)
        .where(
            col(WebhookDelivery.status) == DeliveryStatus.PENDING,
            col(WebhookDelivery.due_at) <= now,
            unsent,
        )
        .order_by(col(WebhookDelivery.due_at))
        .limit(limit)
    )
    claimed = []
    for delivery_id in found.all():
        result = await db.exec(
            update(WebhookDelivery)
            .where(
                col(WebhookDelivery.id) == delivery_id,
                col(WebhookDelivery.status) == DeliveryStatus.PENDING,
                unsent,
            )
            .values(sent_at=now)
        )
        if result.rowcount == 1:
            claimed.append(delivery_id)
    await db.commit()
    return claimed


@dataclass(frozen=True)
class Attempt:
    """What one attempt sends: read from the database, then sent with no connection held."""

    delivery_id: uuid.UUID
    webhook_id: uuid.UUID
    url: str
    secret: str
    message_id: str
    payload: str


async def begin_attempt(
    db: AsyncSession, delivery_id: uuid.UUID, *, now: datetime, lease_before: datetime
) -> Attempt | None:
    """Take a pending delivery's attempt, unless another worker holds it; commits.

    ``attempted_at`` is the lease: a message delivered twice starts one
    attempt, and an attempt whose worker died (older than ``lease_before``)
    is taken over. None when there is nothing to send; a delivery whose
    webhook was disabled meanwhile ends failed.
    """
    delivery = await db.get(WebhookDelivery, delivery_id, populate_existing=True)
    if delivery is None or delivery.status is not DeliveryStatus.PENDING:
        return None
    webhook = await db.get(Webhook, delivery.webhook_id, populate_existing=True)
    if webhook is None:
        return None
    if not webhook.enabled:
        await _end(db, delivery, now, error="The webhook is disabled.")
        return None
    result = await db.exec(
        update(WebhookDelivery)
        .where(
            col(WebhookDelivery.id) == delivery_id,
            col(WebhookDelivery.status) == DeliveryStatus.PENDING,
            or_(
                col(WebhookDelivery.attempted_at).is_(None),
                col(WebhookDelivery.attempted_at) < lease_before,
            ),
        )
        .values(attempted_at=now)
    )
    await db.commit()
    if result.rowcount != 1:
        return None
    return Attempt(
        delivery_id=delivery.id,
        webhook_id=webhook.id,
        url=webhook.url,
        secret=webhook.secret,
        message_id=delivery.message_id,
        payload=delivery.payload,
    )


async def _end(db: AsyncSession, delivery: WebhookDelivery, now: datetime, *, error: str) -> None:
    await db.exec(
        update(WebhookDelivery)
        .where(
            col(WebhookDelivery.id) == delivery.id,
            col(WebhookDelivery.status) == DeliveryStatus.PENDING,
        )
        .values(status=DeliveryStatus.FAILED, attempted_at=now, error=error)
    )
    await db.commit()


@dataclass(frozen=True)
class Result:
    """How an attempt went: the receiver's answer, or why there was none."""

    status_code: int | None
    duration_ms: int
    excerpt: str | None = None
    error: str | None = None
    # Worth another attempt (a timeout, a 5xx, a 429, no connection).
    retry: bool = False
    # The receiver's Retry-After, in seconds.
    retry_after: float | None = None

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def backoff(settings: Settings, attempt: int, retry_after: float | None) -> float:
    """Seconds before the attempt after ``attempt``: the receiver's word, or doubling."""
    if retry_after is not None:
        return min(max(retry_after, 0.0), settings.webhook_retry_max_seconds)
    wait = settings.webhook_retry_base_seconds * 2 ** min(attempt - 1, 30)
    return float(min(wait, settings.webhook_retry_max_seconds))


async def record_attempt(
    db: AsyncSession, settings: Settings, attempt: Attempt, result: Result, *, now: datetime
) -> Webhook | None:
    """Record how an attempt went, queue its retry if one is due; commits.

    Returns the webhook when this attempt disabled it (its owner is to be told).
    """
    delivery = await db.get(WebhookDelivery, attempt.delivery_id, populate_existing=True)
    if delivery is None or delivery.status is not DeliveryStatus.PENDING:
        return None
    retry_at: datetime | None = None
    if not result.succeeded and result.retry:
        wait = backoff(settings, delivery.attempt, result.retry_after)
        at = now + timedelta(seconds=wait)
        if at - delivery.first_due_at <= timedelta(seconds=settings.webhook_retry_window_seconds):
            retry_at = at
    done = await db.exec(
        update(WebhookDelivery)
        .where(
            col(WebhookDelivery.id) == delivery.id,
            col(WebhookDelivery.status) == DeliveryStatus.PENDING,
        )
        .values(
            status=DeliveryStatus.SUCCEEDED if result.succeeded else DeliveryStatus.FAILED,
            status_code=result.status_code,
            duration_ms=result.duration_ms,
            response_excerpt=result.excerpt[:EXCERPT_CHARS] if result.excerpt else None,
            error=result.error[:500] if result.error else None,
            next_retry_at=retry_at,
        )
    )
    if done.rowcount != 1:
        await db.rollback()
        return None
    if retry_at is not None:
        db.add(
            WebhookDelivery(
                webhook_id=delivery.webhook_id,
                message_id=delivery.message_id,
                event_type=delivery.event_type,
                payload=delivery.payload,
                attempt=delivery.attempt + 1,
                first_due_at=delivery.first_due_at,
                due_at=retry_at,
            )
        )
    disabled = await _note_health(db, settings, delivery.webhook_id, result.succeeded, now)
    await db.commit()
    outcome = "succeeded" if result.succeeded else "retried" if retry_at else "failed"
    metrics.WEBHOOK_ATTEMPTS.labels(delivery.event_type.value, outcome).inc()
    return disabled


async def _note_health(
    db: AsyncSession, settings: Settings, webhook_id: uuid.UUID, succeeded: bool, now: datetime
) -> Webhook | None:
    """Track since when a webhook fails; disable it once that is too long (not committed)."""
    if succeeded:
        await db.exec(
            update(Webhook)
            .where(col(Webhook.id) == webhook_id, col(Webhook.failing_since).is_not(None))
            .values(failing_since=None)
        )
        return None
    await db.exec(
        update(Webhook)
        .where(col(Webhook.id) == webhook_id, col(Webhook.failing_since).is_(None))
        .values(failing_since=now)
    )
    since = now - timedelta(seconds=settings.webhook_disable_after_seconds)
    return await disable(db, webhook_id, failing_before=since, now=now)


async def disable(
    db: AsyncSession, webhook_id: uuid.UUID, *, failing_before: datetime, now: datetime
) -> Webhook | None:
    """Disable a webhook failing since before ``failing_before`` (not committed).

    Returns it when this call disabled it: the caller tells its owner after
    committing (:func:`tell_disabled`), once, however many workers race here.
    """
    result = await db.exec(
        update(Webhook)
        .where(
            col(Webhook.id) == webhook_id,
            col(Webhook.enabled),
            col(Webhook.failing_since) <= failing_before,
        )
        .values(enabled=False, disabled_at=now, updated_at=now)
        .returning(Webhook)
    )
    webhook = result.scalars().first()
    if webhook is not None:
        # A mail too, unless a live subscription shows the WEBHOOK_DISABLED event first.
        await notifications.webhook_disabled(
            db,
            webhook.owner_id,
            f"Your webhook to {webhook.url} was switched off: its deliveries kept failing.",
            webhook_id=webhook.id,
        )
    return webhook


async def tell_disabled(events: EventLog, webhook: Webhook) -> None:
    """Tell a webhook's owner it was disabled: ``WEBHOOK_DISABLED`` on ``myEvents``.

    The one place that learns of it, after the commit. The mail was queued
    with the disabling itself (:func:`core.notifications.webhook_disabled`).
    """
    await announce(
        events,
        WebhookDisabled(webhook_id=webhook.id, url=webhook.url, at=utcnow()),
        owner_id=webhook.owner_id,
    )
