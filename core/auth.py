"""Who is calling: resolving a bearer credential to a user."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement
from sqlmodel.ext.asyncio.session import AsyncSession

from core import tokens
from core.access_tokens import user_of_access_token
from core.errors import Unauthenticated
from core.models import Credential, Session, User
from core.sessions import ENDED, SESSION_IS_LIVE, session_is_live_params, user_of_session
from core.settings import Settings
from core.time import utcnow


@dataclass(frozen=True)
class Principal:
    """A signed-in caller: by session (access token) or by personal access token."""

    user: User
    session_id: uuid.UUID | None = None
    access_token_id: uuid.UUID | None = None
    # When the session's access token (a JWT) stops being valid.
    expires_at: datetime | None = None
    # When the personal access token stops being valid (core.signins caches no longer).
    personal_token_expires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Presented:
    """A credential as sent, its form checked (and an access token's signature and expiry).

    ``key`` names it in the sign-in cache (``core.signins``): a session by its
    id and user, a personal access token by its hash.
    """

    key: str
    claims: tokens.AccessClaims | None = None
    secret: str | None = None


def presented(settings: Settings, authorization: str) -> Presented:
    """Parse ``Bearer <access token | personal access token>``, or raise why it is refused.

    No database: a personal token's hash (one SHA-256) or an access token's
    HMAC and claims.
    """
    scheme, _, credential = authorization.strip().partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential:
        raise Unauthenticated("Send credentials as `Authorization: Bearer <token>`.")
    if credential.startswith(tokens.PERSONAL_PREFIX):
        return Presented(f"t:{tokens.token_hash(credential)}", secret=credential)
    claims = tokens.decode_access_token(settings, credential)
    return Presented(f"s:{claims.session_id}:{claims.user_id}", claims=claims)


async def verify(db: AsyncSession, credential: Presented) -> Principal:
    """The principal behind ``credential``, read from the database, or raise why not."""
    if credential.claims is None:
        assert credential.secret is not None
        user, token = await user_of_access_token(db, credential.secret)
        return Principal(user, access_token_id=token.id, personal_token_expires_at=token.expires_at)
    claims = credential.claims
    return Principal(
        await user_of_session(db, claims),
        session_id=claims.session_id,
        expires_at=claims.expires_at,
    )


async def authenticate(db: AsyncSession, settings: Settings, authorization: str) -> Principal:
    """Resolve ``Bearer <access token | personal access token>``, or raise why not."""
    return await verify(db, presented(settings, authorization))


@dataclass(frozen=True)
class Deferred:
    """An access token verified without a query: its user, and the SQL condition (with
    its parameters) that its session is still live, for the one statement the request
    needs to add it to."""

    user_id: uuid.UUID
    live: ColumnElement[bool]
    params: dict[str, uuid.UUID]


def defer(settings: Settings, authorization: str) -> Deferred | None:
    """``Bearer <access token>`` checked as far as it can be without the database, or
    None for a personal access token (:func:`authenticate` it); raises as
    :func:`presented` does for a malformed, forged or expired one.

    A request that takes it must add ``live`` to its one conditional statement, and,
    when that statement matches nothing, :func:`authenticate` before saying why: a
    dead session is refused as ``authenticate`` would refuse it.
    """
    claims = presented(settings, authorization).claims
    if claims is None:
        return None
    return Deferred(claims.user_id, SESSION_IS_LIVE, session_is_live_params(claims))


async def recheck(db: AsyncSession, principal: Principal) -> None:
    """Raise ``Unauthenticated`` if ``principal``'s credential has ended since it was checked.

    For long-lived connections: the session or token revoked, the token
    expired, or the user deactivated. A socket signed in with an access
    token ends with it too, so its client reconnects with a fresh one (and
    resumes from its cursor) instead of listening on with a dead credential.
    """
    if principal.expires_at is not None and tokens.has_expired(principal.expires_at, utcnow()):
        raise Unauthenticated("The access token has expired; refresh the session.")
    user = await db.get(User, principal.user.id, populate_existing=True)
    if user is None or not user.is_active:
        raise Unauthenticated("This account has been deactivated.")
    if principal.session_id is not None:
        session = await db.get(Session, principal.session_id, populate_existing=True)
        if session is None or session.revoked_at is not None:
            raise Unauthenticated(ENDED)
    if principal.access_token_id is not None:
        token = await db.get(Credential, principal.access_token_id, populate_existing=True)
        if token is None or token.revoked_at is not None:
            raise Unauthenticated("The access token has been revoked.")
        if token.expires_at is not None and token.expires_at <= utcnow():
            raise Unauthenticated("The access token has expired.")
