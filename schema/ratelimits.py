"""Counting a resolver's costly action against its caller's and address's limits.

Each resolver that registers, uploads, starts a job or mints a token calls
:func:`count` once, so every field occurrence counts: aliases, batched
operations and WebSocket operations alike. Failures-only limits (refresh,
current password) :func:`check_failures` first and count :func:`failed`
after. The limits themselves are :class:`core.ratelimit.ActionLimiter`'s.
"""

from __future__ import annotations

import uuid

from core.ratelimit import Action
from schema.context import Context


def _user_id(context: Context) -> uuid.UUID | None:
    return context.principal.user.id if context.principal is not None else None


async def count(context: Context, action: Action) -> None:
    """Count one ``action`` by this caller and address: ``RATE_LIMITED`` past its limit."""
    await context.action_limiter.hit(action, user=_user_id(context), address=context.client_address)


async def count_account(context: Context, action: Action, account: str) -> None:
    """Count one ``action`` on the account ``account`` (a normalised address) and
    this address: for actions on an account nobody is signed in to."""
    await context.action_limiter.hit(action, user=account, address=context.client_address)


async def check_failures(context: Context, action: Action) -> None:
    """``RATE_LIMITED`` if this caller or address failed ``action`` too often lately."""
    await context.action_limiter.check(
        action, user=_user_id(context), address=context.client_address
    )


async def failed(context: Context, action: Action) -> None:
    """Count one failure of ``action`` by this caller and address."""
    await context.action_limiter.failed(
        action, user=_user_id(context), address=context.client_address
    )
