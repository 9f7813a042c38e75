"""The mail actors: every mail Depot sends goes out from here, never from a request.

=======================  =====================================================
actor                    does
=======================  =====================================================
``depot.mail.send``      composes one mail (:func:`core.mail.compose`) and
                         delivers it; a refused or dropped connection is tried
                         again with a growing backoff, the same mail each time
``depot.mail.reset``     a password reset asked for an address: if an active
                         account has it, a new token and its mail
``depot.mail.verify``    a verification token for an account's address (or the
                         one it changes to), and its mail
``depot.mail.digest``    a user's pending notifications in one mail
                         (:mod:`core.notifications`)
=======================  =====================================================

The request only hands a message over (:meth:`workers.broker.Jobs.send_to`):
``requestPasswordReset`` does the same work whether the account exists or
not, since the lookup happens here. Tokens are made here, once per message,
and a retried delivery sends the mail already made, so the link that
finally arrives is the one that works.

The actors run on the jobs' queue, with the clients the worker's
:class:`workers.lifecycle.JobLifecycle` opened (which leaves their messages alone).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, Final, TypeVar
from urllib.parse import urlencode

import dramatiq
import structlog
from dramatiq.asyncio import get_event_loop_thread
from dramatiq.common import compute_backoff
from dramatiq.middleware import CurrentMessage

from core import email_tokens, mail, notifications, users
from core.models import TokenPurpose, User
from core.settings import Settings
from workers.resources import Resources

logger = structlog.get_logger("depot.mail")

T = TypeVar("T")

SEND: Final = "depot.mail.send"
RESET: Final = "depot.mail.reset"
VERIFY: Final = "depot.mail.verify"
DIGEST: Final = "depot.mail.digest"
ACTORS: Final = (SEND, RESET, VERIFY, DIGEST)

# A mail is tried this many times, waiting 1 s, 2 s, 4 s … up to 10 minutes
# between tries: some three hours before it is given up (and logged as an error).
MAX_TRIES: Final = 25
RETRY_MIN_BACKOFF_MS: Final = 1000
RETRY_MAX_BACKOFF_MS: Final = 600_000
TIME_LIMIT_MS: Final = 120_000


def outgoing(
    to: str, template: str, values: dict[str, Any], headers: dict[str, str] | None = None
) -> dict[str, Any]:
    """The message ``depot.mail.send`` takes: JSON, rendered by the actor."""
    return {"to": to, "template": template, "values": values, "headers": headers or {}}


def link(settings: Settings, page: str, token: str) -> str:
    """A link to the frontend's ``page`` (``reset-password``, ``verify-email``) with ``token``."""
    return f"{settings.frontend_base}/{page}?{urlencode({'token': token})}"


async def _send(resources: Resources, message: dict[str, Any]) -> None:
    composed = mail.compose(
        resources.settings,
        message["template"],
        message["to"],
        message["values"],
        headers=message.get("headers"),
    )
    await mail.deliver(resources.settings, composed)


async def _reset(resources: Resources, email: str) -> None:
    settings = resources.settings
    async with resources.sessionmaker() as db:
        user = await users.find_by_email(db, email)
        if user is None or not user.is_active:
            # Nothing to send: the caller was told `true` all the same.
            logger.info("password reset asked for an address without an active account")
            return
        token = await email_tokens.issue(
            db,
            user.id,
            TokenPurpose.RESET,
            user.email,
            timedelta(minutes=settings.password_reset_minutes),
        )
        await db.commit()
    values = {
        "link": link(settings, "reset-password", token),
        "minutes": str(settings.password_reset_minutes),
    }
    await resources.jobs.send_to(SEND, outgoing(user.email, "password_reset", values))


async def _verify(resources: Resources, user_id: str, email: str) -> None:
    settings = resources.settings
    async with resources.sessionmaker() as db:
        user = await db.get(User, uuid.UUID(user_id))
        if user is None or not user.is_active:
            return
        change = email != user.email
        if not change and user.email_verified_at is not None:
            return  # verified meanwhile
        token = await email_tokens.issue(
            db,
            user.id,
            TokenPurpose.VERIFY,
            email,
            timedelta(hours=settings.email_verification_hours),
        )
        await db.commit()
    values = {
        "link": link(settings, "verify-email", token),
        "hours": str(settings.email_verification_hours),
        "change": change,
    }
    await resources.jobs.send_to(SEND, outgoing(email, "verify_email", values))


async def _digest(resources: Resources, user_id: str) -> None:
    message = await notifications.digest(
        resources.sessionmaker, resources.settings, uuid.UUID(user_id)
    )
    if message is not None:
        to, values, headers = message
        await resources.jobs.send_to(SEND, outgoing(to, "notifications", values, headers))


def _run(coro: Awaitable[T]) -> T:
    thread = get_event_loop_thread()
    if thread is None:
        raise RuntimeError("the AsyncIO middleware must come before the mail actors")
    return thread.run_coroutine(coro)


def _again_later(broker: dramatiq.Broker, actor: str, exc: Exception) -> None:
    """Send the current message again after a backoff, until ``MAX_TRIES``."""
    message = CurrentMessage.get_current_message()
    assert message is not None
    tries = int(message.options.get("depot_attempt", 0)) + 1
    if tries >= MAX_TRIES:
        logger.error("mail given up", actor=actor, tries=tries, error=mail_error(exc))
        return
    _, backoff = compute_backoff(
        tries, factor=RETRY_MIN_BACKOFF_MS // 2, max_backoff=RETRY_MAX_BACKOFF_MS
    )
    logger.warning(
        "mail not sent; trying again",
        actor=actor,
        tries=tries,
        delay_ms=backoff,
        error=mail_error(exc),
    )
    broker.enqueue(message.copy(options={**message.options, "depot_attempt": tries}), delay=backoff)


def mail_error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def declare_actors(broker: dramatiq.Broker, queue: str, resources: Callable[[], Resources]) -> None:
    """Declare the mail actors on ``broker``; ``resources`` gives the worker's clients."""

    def actor(name: str, work: Callable[..., Awaitable[None]]) -> None:
        def run(*args: Any) -> None:
            try:
                _run(work(resources(), *args))
            except Exception as exc:  # noqa: BLE001 - every failure is tried again
                _again_later(broker, name, exc)

        dramatiq.Actor(
            run,
            broker=broker,
            actor_name=name,
            queue_name=queue,
            # Lower runs first: a reset mail does not wait behind a queue of jobs.
            priority=-10,
            options={"time_limit": TIME_LIMIT_MS},
        )

    actor(SEND, _send)
    actor(RESET, _reset)
    actor(VERIFY, _verify)
    actor(DIGEST, _digest)
