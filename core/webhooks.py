"""Webhooks: their owners' URLs and the events queued for them.

An event is queued where its change is made, in the same transaction
(:func:`queue_job_finished`, :func:`queue_file_created`,
:func:`queue_file_deleted`): one ``webhook_delivery`` row per subscribed
webhook, so the change and its delivery commit together and neither is lost
without the other. Sending them is :mod:`core.webhook_deliveries`.
"""

from __future__ import annotations

import base64
import json
import secrets
import uuid
from collections.abc import Sequence
from typing import Any, Final

from sqlalchemy import Exists, exists
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from core.errors import BadUserInput, Conflict, NotFound
from core.ids import encode_id
from core.models import File, Job, JobStatus, Webhook, WebhookDelivery, WebhookEventType
from core.settings import Settings
from core.time import utcnow
from core.webhook_deliveries import SECRET_PREFIX
from core.webhook_targets import resolve

MAX_WEBHOOKS_PER_USER: Final = 20

_JOB_EVENTS: Final = {
    JobStatus.SUCCEEDED: WebhookEventType.JOB_SUCCEEDED,
    JobStatus.FAILED: WebhookEventType.JOB_FAILED,
    JobStatus.CANCELLED: WebhookEventType.JOB_CANCELLED,
}


def _not_found() -> NotFound:
    return NotFound("No such webhook.")


# ----------------------------------------------------------------- secrets


def new_secret() -> str:
    """A signing secret: ``whsec_`` and 24 random bytes in base64, as Standard Webhooks has it."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def new_message_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


# ----------------------------------------------------------------- the owner's side


def check_events(events: Sequence[WebhookEventType]) -> list[str]:
    """The events a webhook subscribes to, once each, in a stable order."""
    if not events:
        raise BadUserInput("A webhook subscribes to at least one event.", field="events")
    return [e.value for e in WebhookEventType if e in set(events)]


async def check_url(settings: Settings, url: str) -> str:
    """``url`` if webhooks may point there (see :mod:`core.webhook_targets`), else why not."""
    await resolve(
        url,
        allow_private=settings.webhook_allow_private_networks,
        require_https=settings.is_production,
    )
    return url


async def get_owned_webhook(
    db: AsyncSession, owner_id: uuid.UUID, webhook_id: uuid.UUID
) -> Webhook:
    """``owner_id``'s webhook, or ``NOT_FOUND`` (for another user's too)."""
    webhook = await db.get(Webhook, webhook_id, populate_existing=True)
    if webhook is None or webhook.owner_id != owner_id:
        raise _not_found()
    return webhook


async def create_webhook(
    db: AsyncSession,
    settings: Settings,
    owner_id: uuid.UUID,
    url: str,
    events: Sequence[WebhookEventType],
) -> Webhook:
    """A new webhook with a new secret; commits. Its URL is checked (one DNS lookup)."""
    subscribed = check_events(events)
    await check_url(settings, url)
    count = len((await db.exec(select(Webhook.id).where(col(Webhook.owner_id) == owner_id))).all())
    if count >= MAX_WEBHOOKS_PER_USER:
        raise Conflict(f"A user has at most {MAX_WEBHOOKS_PER_USER} webhooks; delete one first.")
    webhook = Webhook(owner_id=owner_id, url=url, events=subscribed, secret=new_secret())
    db.add(webhook)
    await db.commit()
    return webhook


async def update_webhook(
    db: AsyncSession,
    settings: Settings,
    owner_id: uuid.UUID,
    webhook_id: uuid.UUID,
    *,
    url: str | None = None,
    events: Sequence[WebhookEventType] | None = None,
    enabled: bool | None = None,
) -> Webhook:
    """Change what is given; commits. Enabling a disabled webhook forgets its failures."""
    webhook = await get_owned_webhook(db, owner_id, webhook_id)
    if url is not None:
        webhook.url = await check_url(settings, url)
    if events is not None:
        webhook.events = check_events(events)
    if enabled is not None and enabled != webhook.enabled:
        webhook.enabled = enabled
        webhook.disabled_at = None if enabled else utcnow()
        webhook.failing_since = None
    webhook.updated_at = utcnow()
    db.add(webhook)
    await db.commit()
    return webhook


async def delete_webhook(db: AsyncSession, owner_id: uuid.UUID, webhook_id: uuid.UUID) -> Webhook:
    """Delete a webhook and its deliveries (cascade); commits. Returns it as it was."""
    webhook = await get_owned_webhook(db, owner_id, webhook_id)
    await db.delete(webhook)
    await db.commit()
    return webhook


async def rotate_secret(db: AsyncSession, owner_id: uuid.UUID, webhook_id: uuid.UUID) -> Webhook:
    """Give a webhook a new secret; commits. Attempts from now on are signed with it."""
    webhook = await get_owned_webhook(db, owner_id, webhook_id)
    webhook.secret = new_secret()
    webhook.updated_at = utcnow()
    db.add(webhook)
    await db.commit()
    return webhook


async def redeliver(
    db: AsyncSession, owner_id: uuid.UUID, delivery_id: uuid.UUID
) -> WebhookDelivery:
    """Send a delivery's event again, with the same ``webhook-id``, as a new chain; commits."""
    delivery = await db.get(WebhookDelivery, delivery_id)
    if delivery is None:
        raise NotFound("No such delivery.")
    webhook = await get_owned_webhook(db, owner_id, delivery.webhook_id)
    if not webhook.enabled:
        raise Conflict("The webhook is disabled; enable it first (updateWebhook).")
    now = utcnow()
    again = WebhookDelivery(
        webhook_id=webhook.id,
        message_id=delivery.message_id,
        event_type=delivery.event_type,
        payload=delivery.payload,
        first_due_at=now,
        due_at=now,
    )
    db.add(again)
    await db.commit()
    return again


# ----------------------------------------------------------------- queueing events


async def _subscribed(
    db: AsyncSession, owner_id: uuid.UUID, event_type: WebhookEventType
) -> list[Webhook]:
    """The owner's enabled webhooks that want ``event_type``: one indexed SELECT."""
    return _wanting(await _enabled(db, owner_id), event_type)


async def _enabled(db: AsyncSession, owner_id: uuid.UUID) -> list[Webhook]:
    found = await db.exec(
        select(Webhook).where(col(Webhook.owner_id) == owner_id, col(Webhook.enabled))
    )
    return list(found.all())


def _wanting(hooks: list[Webhook], event_type: WebhookEventType) -> list[Webhook]:
    return [w for w in hooks if event_type.value in w.events]


def _queue(db: AsyncSession, hooks: list[Webhook], event_type: WebhookEventType, data: Any) -> None:
    now = utcnow()
    body = json.dumps(
        {"type": event_type.value, "timestamp": now.isoformat(), "data": data},
        separators=(",", ":"),
    )
    message_id = new_message_id()
    for webhook in hooks:
        db.add(
            WebhookDelivery(
                webhook_id=webhook.id,
                message_id=message_id,
                event_type=event_type,
                payload=body,
                first_due_at=now,
                due_at=now,
            )
        )


def _job_data(job: Job) -> dict[str, Any]:
    return {
        "job": {
            "id": encode_id("Job", job.id),
            "kind": job.kind.upper(),  # the API's JobKind, as status is its JobStatus
            "status": job.status.name,
            "message": job.message,
            "error": job.error,
            "finishedAt": job.finished_at.isoformat() if job.finished_at else None,
        }
    }


def _file_data(file: File) -> dict[str, Any]:
    return {
        "file": {
            "id": encode_id("File", file.id),
            "path": file.path,
            "size": file.size,
            "contentType": file.content_type,
            "sha256": file.sha256,
            "producedBy": encode_id("Job", file.produced_by_job_id)
            if file.produced_by_job_id
            else None,
        }
    }


def any_enabled(owner_id: Any) -> Exists:
    """Whether the owner ``owner_id`` (a column, or a value) has an enabled webhook: an
    expression for a statement to return, so that it answers :func:`queue_job_finished`'s
    first question (``any_enabled=``) without a SELECT of its own."""
    return exists().where(col(Webhook.owner_id) == owner_id, col(Webhook.enabled))


async def queue_job_finished(db: AsyncSession, job: Job, *, any_enabled: bool = True) -> None:
    """Queue the job's final status, and a succeeded job's outputs as created files.

    In the caller's transaction, before it commits. For an owner without
    webhooks it costs one indexed SELECT, or nothing when the statement that
    ended the job said so (``any_enabled=False``, see :func:`any_enabled`).
    """
    if not any_enabled:
        return
    event_type = _JOB_EVENTS[job.status]
    # One SELECT for both questions: the owner's enabled webhooks, split here.
    enabled = await _enabled(db, job.owner_id)
    hooks = _wanting(enabled, event_type)
    if hooks:
        _queue(db, hooks, event_type, _job_data(job))
    if job.status is JobStatus.SUCCEEDED:
        file_hooks = _wanting(enabled, WebhookEventType.FILE_CREATED)
        if file_hooks:
            outputs = await db.exec(
                select(File).where(
                    col(File.produced_by_job_id) == job.id, col(File.trashed_at).is_(None)
                )
            )
            for file in outputs.all():
                _queue(db, file_hooks, WebhookEventType.FILE_CREATED, _file_data(file))


async def queue_file_created(db: AsyncSession, file: File) -> None:
    """Queue an uploaded file (a job's outputs go with its success), before the commit."""
    hooks = await _subscribed(db, file.owner_id, WebhookEventType.FILE_CREATED)
    if hooks:
        _queue(db, hooks, WebhookEventType.FILE_CREATED, _file_data(file))


async def queue_file_deleted(db: AsyncSession, file: File) -> None:
    """Queue a file going to the trash, or purged while live, before the commit.

    A purged file that was in the trash was told of when it went there; the
    outputs of a job that did not succeed were never told of at all.
    """
    if file.trashed_at is not None:
        return
    hooks = await _subscribed(db, file.owner_id, WebhookEventType.FILE_DELETED)
    if not hooks:
        return
    if file.produced_by_job_id is not None:
        job = await db.get(Job, file.produced_by_job_id)
        if job is not None and job.status is not JobStatus.SUCCEEDED:
            return
    _queue(
        db,
        hooks,
        WebhookEventType.FILE_DELETED,
        {"file": {"id": encode_id("File", file.id), "path": file.path}},
    )
