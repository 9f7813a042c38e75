"""Notifications by mail: what to tell a user who was not watching, batched.

Something worth telling (a job finished or failed, storage nearly full, a
webhook disabled) becomes a ``notification`` row when its user's preference
(``user.mail_*``) says mail — :func:`record`, one ``INSERT … SELECT`` that
adds nothing for a user who said no. Then:

- a live subscription that delivers the event (``jobEvents`` or ``myEvents``,
  a job's final status) deletes the row (:func:`seen`): no mail for what the
  user just watched. One ``DELETE`` per job's final event and subscriber;
  progress events cost nothing;
- :func:`sweep`, every quarter of ``DEPOT_NOTIFICATION_DELAY_SECONDS`` in
  the scheduler, asks for a digest of every user with rows older than that
  delay, unless they were mailed less than ``DEPOT_NOTIFICATION_BATCH_SECONDS``
  ago (:func:`storage_warnings`, a maintenance task, notices storage past 90 %);
- :func:`digest` (the ``depot.mail.digest`` actor) takes the user's due rows
  in one ``DELETE … RETURNING``, stamps ``user.notified_at`` and returns the
  mail's contents, with an unsubscribe link that needs no sign-in.

Other parts of Depot tell of their events with :func:`record` (or
:func:`webhook_disabled`), in their own transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, Final

import anyio
import structlog
from sqlalchemy import Uuid, delete, exists, insert, literal, or_, update
from sqlalchemy import select as select_columns
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from core.db import SessionMaker
from core.links import LinkSigner
from core.models import Job, JobStatus, Notification, NotificationKind, User
from core.settings import Settings
from core.time import UTCDateTime, utcnow

logger = structlog.get_logger("depot.notifications")

# The route that unsubscribes without signing in (api.notifications serves it).
UNSUBSCRIBE_PATH: Final = "/notifications/unsubscribe/"
# An unsubscribe link in an old mail still works for this long.
UNSUBSCRIBE_LINK_DAYS: Final = 366
# Storage this full is worth a mail; it is told again only after going below REARM.
STORAGE_WARN: Final = 0.9
STORAGE_REARM: Final = 0.8

# Which preference (a column of ``user``) decides each kind.
PREFERENCE: Final = {
    NotificationKind.JOB_SUCCEEDED: "mail_job_succeeded",
    NotificationKind.JOB_FAILED: "mail_job_failed",
    NotificationKind.STORAGE_FULL: "mail_storage_full",
    NotificationKind.WEBHOOK_DISABLED: "mail_webhook_disabled",
}

Tell = Callable[[uuid.UUID], Awaitable[None]]


async def record(
    db: AsyncSession,
    user_id: uuid.UUID,
    kind: NotificationKind,
    summary: str,
    subject_id: uuid.UUID | None = None,
) -> bool:
    """Keep a notification for ``user_id`` if they want ``kind`` by mail (not committed);
    whether one was kept. ``subject_id`` (a job's id) lets a subscription mark it seen."""
    wanted = select_columns(
        literal(uuid.uuid4(), Uuid()),
        col(User.id),
        literal(kind.value),
        literal(subject_id, Uuid()),
        literal(summary[:500]),
        literal(utcnow(), UTCDateTime()),
    ).where(col(User.id) == user_id, col(getattr(User, PREFERENCE[kind])).is_(True))
    result = await db.exec(
        insert(Notification).from_select(
            ["id", "user_id", "kind", "subject_id", "summary", "created_at"], wanted
        )
    )
    return bool(result.rowcount)


async def webhook_disabled(
    db: AsyncSession, user_id: uuid.UUID, summary: str, *, webhook_id: uuid.UUID
) -> bool:
    """Tell a webhook's owner it was switched off (``summary`` says which, and why);
    not committed (:func:`core.webhook_deliveries.disable`, in its transaction)."""
    return await record(
        db, user_id, NotificationKind.WEBHOOK_DISABLED, summary, subject_id=webhook_id
    )


async def job_ended(db: AsyncSession, job: Job) -> None:
    """Keep a notification of a job that succeeded or failed (a cancelled one its owner
    knows of), in the transaction that records its final status (not committed).

    One statement in that transaction rather than one of its own, and committed
    with the status, so a subscriber that sees the final event finds the row to
    delete. It fails only when the database does, and then the finish is tried
    again as a whole.
    """
    if job.status is JobStatus.SUCCEEDED:
        kind, summary = NotificationKind.JOB_SUCCEEDED, f"Your {job.kind} job finished."
    elif job.status is JobStatus.FAILED:
        kind = NotificationKind.JOB_FAILED
        summary = f"Your {job.kind} job failed: {job.error or 'no reason given'}"
    else:
        return
    await record(db, job.owner_id, kind, summary, subject_id=job.id)


async def seen(sessionmaker: SessionMaker, user_id: uuid.UUID, subject_id: uuid.UUID) -> None:
    """A live subscription of ``user_id`` delivered the event about ``subject_id``: no mail.

    Shielded: a tab closed right after it showed the event still saw it.
    """
    try:
        with anyio.CancelScope(shield=True):
            async with sessionmaker() as db:
                await db.exec(
                    delete(Notification).where(
                        col(Notification.user_id) == user_id,
                        col(Notification.subject_id) == subject_id,
                    )
                )
                await db.commit()
    except Exception:
        logger.exception("notification not marked seen", subject_id=str(subject_id))


async def sweep(
    sessionmaker: SessionMaker, settings: Settings, tell: Tell, now: datetime | None = None
) -> int:
    """Ask for the digest of each user with notifications due; returns how many."""
    now = now or utcnow()
    async with sessionmaker() as db:
        due = await db.exec(
            select(col(User.id)).where(
                exists().where(
                    col(Notification.user_id) == col(User.id),
                    col(Notification.created_at) <= now - _delay(settings),
                ),
                _may_mail(settings, now),
            )
        )
        users = list(due)
    for user_id in users:
        await tell(user_id)
    return len(users)


async def storage_warnings(sessionmaker: SessionMaker, now: datetime | None = None) -> int:
    """Record a warning for storage past 90 % not yet told, re-arm it below 80 %; commits.

    A maintenance task (two scans of ``user``, every maintenance interval),
    reading ``used_bytes`` there rather than on the upload path, which stays
    untouched. Returns how many warnings it recorded.
    """
    now = now or utcnow()
    full = col(User.used_bytes) * 100 >= col(User.quota_bytes) * int(STORAGE_WARN * 100)
    async with sessionmaker() as db:
        rows = await db.exec(
            select(col(User.id), col(User.used_bytes), col(User.quota_bytes)).where(
                col(User.quota_bytes) > 0, full, col(User.storage_warned_at).is_(None)
            )
        )
        found = rows.all()
        for user_id, used, quota in found:
            summary = f"Your storage is {used * 100 // quota} % full ({used:,} of {quota:,} bytes)."
            await record(db, user_id, NotificationKind.STORAGE_FULL, summary)
            await db.exec(update(User).where(col(User.id) == user_id).values(storage_warned_at=now))
        rearm = col(User.used_bytes) * 100 < col(User.quota_bytes) * int(STORAGE_REARM * 100)
        await db.exec(
            update(User)
            .where(col(User.storage_warned_at).is_not(None), rearm)
            .values(storage_warned_at=None)
        )
        await db.commit()
    return len(found)


def _delay(settings: Settings) -> timedelta:
    return timedelta(seconds=settings.notification_delay_seconds)


def _may_mail(settings: Settings, now: datetime) -> Any:
    """Not mailed within the batch interval."""
    batch = timedelta(seconds=settings.notification_batch_seconds)
    return or_(col(User.notified_at).is_(None), col(User.notified_at) <= now - batch)


async def digest(
    sessionmaker: SessionMaker, settings: Settings, user_id: uuid.UUID
) -> tuple[str, dict[str, Any], dict[str, str]] | None:
    """Take the user's due notifications: the mail's address, values and headers, or None.

    The batch stamp and the rows go in one transaction: of two digests for
    one user, one mails and the other finds nothing.
    """
    now = utcnow()
    async with sessionmaker() as db:
        stamped = await db.exec(
            update(User)
            .where(col(User.id) == user_id, col(User.is_active).is_(True), _may_mail(settings, now))
            .values(notified_at=now)
        )
        if stamped.rowcount != 1:
            return None
        taken = await db.exec(
            delete(Notification)
            .where(
                col(Notification.user_id) == user_id,
                col(Notification.created_at) <= now - _delay(settings),
            )
            .returning(
                col(Notification.kind), col(Notification.summary), col(Notification.created_at)
            )
        )
        rows = sorted(taken.all(), key=lambda row: row[2])
        user = await db.get(User, user_id)
        assert user is not None
        # Preferences may have changed since the rows were kept.
        items = [summary for kind, summary, _ in rows if getattr(user, PREFERENCE[kind])]
        if not items:
            await db.rollback()
            return None
        await db.commit()
    link = unsubscribe_link(settings, user_id)
    headers = {
        "List-Unsubscribe": f"<{link}>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",  # RFC 8058
    }
    return user.email, {"items": items, "unsubscribe": link}, headers


def unsubscribe_link(settings: Settings, user_id: uuid.UUID) -> str:
    """A link that turns every notification mail of the user off, without signing in."""
    token = LinkSigner(settings.secret).sign(
        "unsubscribe", utcnow() + timedelta(days=UNSUBSCRIBE_LINK_DAYS), key=str(user_id)
    )
    return f"{str(settings.public_base_url).rstrip('/')}{UNSUBSCRIBE_PATH}{token}"


async def unsubscribe(db: AsyncSession, user_id: uuid.UUID) -> bool:
    """Turn every notification mail of the user off (not committed); whether they exist."""
    result = await db.exec(
        update(User)
        .where(col(User.id) == user_id)
        .values(dict.fromkeys(PREFERENCE.values(), False))
    )
    await db.exec(delete(Notification).where(col(Notification.user_id) == user_id))
    return bool(result.rowcount)
