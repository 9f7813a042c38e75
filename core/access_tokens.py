"""Personal access tokens: long-lived, named, revocable credentials for scripts.

Every token expires (``DEPOT_PERSONAL_TOKEN_DEFAULT_DAYS`` unless its owner
asks for less or more, never past ``DEPOT_PERSONAL_TOKEN_MAX_DAYS``), a user
holds at most ``DEPOT_PERSONAL_TOKENS_PER_USER`` live ones, and account
recovery (a password change, signing out everywhere) revokes them all.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import ColumnElement, bindparam, func, or_, update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from core import tokens
from core.errors import BadUserInput, Conflict, NotFound, Unauthenticated
from core.models import Credential, CredentialKind, User
from core.settings import Settings
from core.time import utcnow

NAME_MAX = 100
# Recording every use would write on every request; once a minute is enough.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def _live(user_id: uuid.UUID) -> list[ColumnElement[bool]]:
    now = utcnow()
    return [
        col(Credential.user_id) == user_id,
        col(Credential.kind) == CredentialKind.PERSONAL,
        col(Credential.revoked_at).is_(None),
        or_(col(Credential.expires_at).is_(None), col(Credential.expires_at) > now),
    ]


async def create_access_token(
    db: AsyncSession, settings: Settings, user: User, name: str, expires_in_days: int | None
) -> tuple[Credential, str]:
    """Add a token (not yet committed); the secret is returned once and never stored.

    Without ``expires_in_days`` it lasts the default lifetime.
    """
    name = name.strip()
    if not name or len(name) > NAME_MAX:
        raise BadUserInput(f"Give the token a name of 1 to {NAME_MAX} characters.", field="name")
    most = settings.personal_token_max_days
    if expires_in_days is None:
        expires_in_days = min(settings.personal_token_default_days, most)
    if not 1 <= expires_in_days <= most:
        raise BadUserInput(f"Tokens expire after 1 to {most} days.", field="expiresInDays")
    held = (
        await db.exec(select(func.count()).select_from(Credential).where(*_live(user.id)))
    ).one()
    if held >= settings.personal_tokens_per_user:
        raise Conflict(
            f"You hold {held} access tokens, the most allowed; revoke one you no longer use."
        )
    now = utcnow()
    secret = tokens.new_opaque_token(tokens.PERSONAL_PREFIX)
    credential = Credential(
        user_id=user.id,
        kind=CredentialKind.PERSONAL,
        token_hash=tokens.token_hash(secret),
        name=name,
        created_at=now,
        expires_at=now + timedelta(days=expires_in_days),
    )
    db.add(credential)
    await db.flush()
    return credential, secret


async def list_access_tokens(db: AsyncSession, user_id: uuid.UUID) -> list[Credential]:
    result = await db.exec(
        select(Credential)
        .where(
            Credential.user_id == user_id,
            Credential.kind == CredentialKind.PERSONAL,
            col(Credential.revoked_at).is_(None),
        )
        .order_by(col(Credential.created_at))
    )
    return list(result)


async def revoke_access_token(
    db: AsyncSession, user_id: uuid.UUID, token_id: uuid.UUID
) -> Credential:
    credential = await db.get(Credential, token_id)
    if (
        credential is None
        or credential.user_id != user_id
        or credential.kind is not CredentialKind.PERSONAL
        or credential.revoked_at is not None
    ):
        raise NotFound("No such access token.")
    credential.revoked_at = utcnow()
    db.add(credential)
    return credential


async def revoke_all_access_tokens(db: AsyncSession, user_id: uuid.UUID) -> int:
    """Revoke every live personal token of the user (account recovery); returns how many."""
    result = await db.exec(
        update(Credential)
        .where(
            col(Credential.user_id) == user_id,
            col(Credential.kind) == CredentialKind.PERSONAL,
            col(Credential.revoked_at).is_(None),
        )
        .values(revoked_at=utcnow())
    )
    return int(result.rowcount)


# Built once, as core.sessions' sign-in statement is: it runs on every request.
_USER_OF_ACCESS_TOKEN = (
    select(User, Credential)
    .join(Credential, col(Credential.user_id) == col(User.id))
    .where(
        col(Credential.token_hash) == bindparam("token_hash"),
        col(Credential.kind) == CredentialKind.PERSONAL,
    )
)


async def user_of_access_token(db: AsyncSession, secret: str) -> tuple[User, Credential]:
    """The user behind a personal access token that is live, unexpired and active."""
    params = {"token_hash": tokens.token_hash(secret)}
    row = (await db.exec(_USER_OF_ACCESS_TOKEN, params=params)).first()
    now = utcnow()
    if row is None or row[1].revoked_at is not None:
        raise Unauthenticated("The access token is invalid or revoked.")
    user, credential = row
    if credential.expires_at is not None and credential.expires_at <= now:
        raise Unauthenticated("The access token has expired.")
    if not user.is_active:
        raise Unauthenticated("This account has been deactivated.")
    if credential.last_used_at is None or now - credential.last_used_at > LAST_USED_RESOLUTION:
        credential.last_used_at = now
        db.add(credential)
        await db.commit()
    return user, credential
