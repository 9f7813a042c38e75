"""Sign-in sessions: refresh tokens rotated on every use, theft detection, revocation.

A session is one family of refresh tokens. Each refresh marks the presented
token used and issues the next; presenting a used token again means two
parties hold the family, so the whole session is revoked. Access tokens carry
their session id, so revoking a session ends its access tokens at once.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, bindparam, update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from core import access_tokens, email_tokens, passwords, tokens, users
from core.errors import BadUserInput, Unauthenticated
from core.models import Credential, CredentialKind, Session, TokenPurpose, User
from core.ratelimit import LoginLimiter
from core.settings import Settings
from core.time import utcnow

ENDED = "The session has ended; sign in again."


class RefreshTokenReused(Unauthenticated):
    """A used refresh token came again: its session has been revoked (and committed)."""

    def __init__(self, user_id: uuid.UUID) -> None:
        super().__init__(
            "This refresh token was already used, so it may have been stolen: "
            "the session has been ended. Sign in again."
        )
        self.user_id = user_id


@dataclass(frozen=True)
class Tokens:
    access_token: str
    access_token_expires_at: datetime
    refresh_token: str


def _refresh_credential(
    settings: Settings, session: Session, now: datetime
) -> tuple[Credential, str]:
    secret = tokens.new_opaque_token(tokens.REFRESH_PREFIX)
    credential = Credential(
        user_id=session.user_id,
        kind=CredentialKind.REFRESH,
        token_hash=tokens.token_hash(secret),
        session_id=session.id,
        created_at=now,
        expires_at=now + timedelta(days=settings.refresh_token_days),
    )
    return credential, secret


def _tokens(settings: Settings, session: Session, refresh: str, now: datetime) -> Tokens:
    access, expires = tokens.issue_access_token(settings, session.user_id, session.id, now)
    return Tokens(access, expires, refresh)


async def start_session(db: AsyncSession, settings: Settings, user: User) -> Tokens:
    """Open a session for ``user`` (not yet committed) and issue its first tokens."""
    now = utcnow()
    session = Session(user_id=user.id, created_at=now, last_used_at=now)
    db.add(session)
    # No relationship() links these models, so the unit of work does not
    # order their INSERTs by foreign key: flush the parents first.
    await db.flush()
    credential, refresh = _refresh_credential(settings, session, now)
    db.add(credential)
    await db.flush()
    return _tokens(settings, session, refresh, now)


async def refresh_session(
    db: AsyncSession, settings: Settings, refresh_token: str
) -> tuple[User, Tokens]:
    """Rotate a refresh token. A token used twice revokes its whole session."""
    now = utcnow()
    row = (
        await db.exec(
            select(Credential, Session, User)
            .join(Session, col(Session.id) == col(Credential.session_id))
            .join(User, col(User.id) == col(Credential.user_id))
            .where(
                Credential.token_hash == tokens.token_hash(refresh_token),
                Credential.kind == CredentialKind.REFRESH,
            )
        )
    ).first()
    if row is None:
        raise Unauthenticated("The refresh token is invalid.")
    credential, session, user = row
    if session.revoked_at is not None or not user.is_active:
        raise Unauthenticated(ENDED)
    if credential.expires_at is not None and credential.expires_at <= now:
        raise Unauthenticated("The session has expired; sign in again.")
    # Conditional update: of two concurrent refreshes with one token, one wins.
    claimed = await db.exec(
        update(Credential)
        .where(col(Credential.id) == credential.id, col(Credential.used_at).is_(None))
        .values(used_at=now)
    )
    if claimed.rowcount != 1:
        await revoke_sessions(db, col(Session.id) == session.id)
        await db.commit()  # the revocation must outlive the error raised next
        raise RefreshTokenReused(user.id)
    session.last_used_at = now
    new_credential, refresh = _refresh_credential(settings, session, now)
    db.add(new_credential)
    await db.flush()
    return user, _tokens(settings, session, refresh, now)


async def revoke_sessions(db: AsyncSession, *conditions: ColumnElement[bool]) -> int:
    """Revoke every live session matching ``conditions``; returns how many."""
    result = await db.exec(
        update(Session)
        .where(col(Session.revoked_at).is_(None), *conditions)
        .values(revoked_at=utcnow())
    )
    return int(result.rowcount)


async def end_session_of_refresh_token(db: AsyncSession, refresh_token: str) -> uuid.UUID | None:
    """Log out: revoke the session a refresh token belongs to; its user's id, if any."""
    row = (
        await db.exec(
            select(Credential.session_id, Credential.user_id).where(
                Credential.token_hash == tokens.token_hash(refresh_token),
                Credential.kind == CredentialKind.REFRESH,
            )
        )
    ).first()
    if row is None:
        return None
    await revoke_sessions(db, col(Session.id) == row[0])
    return row[1]


# Built once: building a statement (columns compared, the join) costs about as
# much Python as running a cached one; SQLAlchemy caches its compiled SQL by shape.
# The session's one column needed, not its entity: loading an ORM object (identity
# map, instance state) costs more than the query's round trip on a small row.
_USER_OF_SESSION = (
    select(User, col(Session.revoked_at))
    .join(Session, col(Session.user_id) == col(User.id))
    .where(col(Session.id) == bindparam("session_id"), col(User.id) == bindparam("user_id"))
)


SESSION_IS_LIVE: ColumnElement[bool] = (
    select(col(Session.id))
    .join(User, col(User.id) == col(Session.user_id))
    .where(
        col(Session.id) == bindparam("live_session_id"),
        col(User.id) == bindparam("live_user_id"),
        col(Session.revoked_at).is_(None),
        col(User.is_active).is_(True),
    )
    .exists()
)
"""SQL that is true while a verified token's session is live and its user active (what
:func:`user_of_session` checks), for a statement that needs the check and can carry it
(a tus ``PATCH``'s lease) instead of a query of its own; its parameters are
:func:`session_is_live_params`'. Built once: building it per request cost more than
the query it replaces."""


def session_is_live_params(claims: tokens.AccessClaims) -> dict[str, uuid.UUID]:
    return {"live_session_id": claims.session_id, "live_user_id": claims.user_id}


async def user_of_session(db: AsyncSession, claims: tokens.AccessClaims) -> User:
    """The user behind a verified access token, if its session is still live."""
    params = {"session_id": claims.session_id, "user_id": claims.user_id}
    row = (await db.exec(_USER_OF_SESSION, params=params)).first()
    if row is None:
        raise Unauthenticated(ENDED)
    user, revoked_at = row
    if revoked_at is not None:
        raise Unauthenticated(ENDED)
    if not user.is_active:
        raise Unauthenticated("This account has been deactivated.")
    return user


async def change_password(
    db: AsyncSession,
    settings: Settings,
    user: User,
    current: str,
    new: str,
    keep_session: uuid.UUID | None,
) -> None:
    """Replace the password after checking the current one; end every other session.

    Personal access tokens are revoked too: whoever knew the old password may
    have minted some.
    """
    ph = passwords.hasher(settings.password_hash_memory_kib, settings.password_hash_iterations)
    if not await passwords.verify_password(ph, user.password_hash, current):
        raise Unauthenticated("The current password is wrong.")
    passwords.check_password_rules(new, field="newPassword")
    user.password_hash = await passwords.hash_password(ph, new)
    user.updated_at = utcnow()
    db.add(user)
    others = [col(Session.id) != keep_session] if keep_session is not None else []
    await revoke_sessions(db, col(Session.user_id) == user.id, *others)
    await access_tokens.revoke_all_access_tokens(db, user.id)


async def reset_password(db: AsyncSession, settings: Settings, secret: str, new: str) -> User:
    """Set a new password with a reset token from a mail (not yet committed).

    As after :func:`change_password`, every session ends and every personal
    access token is revoked: whoever had the old password may have made some.
    The token proves its holder reads the account's mail, so the address counts
    as verified. A token mailed before the address changed is worthless.
    """
    passwords.check_password_rules(new, field="newPassword")
    token = await email_tokens.redeem(db, secret, TokenPurpose.RESET)
    user = await db.get(User, token.user_id)
    if user is None or token.email != user.email:
        raise BadUserInput(email_tokens.INVALID, field="token")
    if not user.is_active:
        raise Unauthenticated("This account has been deactivated.")
    ph = passwords.hasher(settings.password_hash_memory_kib, settings.password_hash_iterations)
    now = utcnow()
    user.password_hash = await passwords.hash_password(ph, new)
    user.email_verified_at = user.email_verified_at or now
    user.updated_at = now
    db.add(user)
    await revoke_sessions(db, col(Session.user_id) == user.id)
    await access_tokens.revoke_all_access_tokens(db, user.id)
    return user


async def sign_in(
    db: AsyncSession,
    settings: Settings,
    limiter: LoginLimiter,
    *,
    email: str,
    password: str,
    address: str,
) -> tuple[User, Tokens]:
    """Check credentials (rate-limited: see :mod:`core.ratelimit`) and open a session.

    An unknown email and a wrong password take the same time and get the same
    answer, so sign-in does not reveal which accounts exist. An account under
    attack answers slower, for everyone, but refuses nobody.
    """
    account = users.account_key(email)
    # An invalid address still counts against the limits, under its raw form.
    limit_key = account or email.strip().lower()
    delay = await limiter.check(limit_key, address)
    if delay:
        await asyncio.sleep(delay)
    user = await users.find_by_email(db, account) if account else None
    ph = passwords.hasher(settings.password_hash_memory_kib, settings.password_hash_iterations)
    acceptable = len(password) <= passwords.MAX_LENGTH
    valid = await passwords.verify_password(
        ph, user.password_hash if user and acceptable else None, password[: passwords.MAX_LENGTH]
    )
    if user is None or not valid:
        await limiter.failed(limit_key, address)
        raise Unauthenticated("Wrong email or password.")
    if not user.is_active:
        raise Unauthenticated("This account has been deactivated.")
    if passwords.needs_rehash(ph, user.password_hash):
        user.password_hash = await passwords.hash_password(ph, password)
        db.add(user)
    return user, await start_session(db, settings, user)
