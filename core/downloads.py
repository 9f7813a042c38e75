"""Whether a download link may still serve its file, asked on every request.

A signature and an expiry say only that Depot handed the link out. The
link must also die with what it was handed out for: the file (trashed or
purged), its owner (deactivated) and the credential that asked for it (a
session ended by ``logout``, ``changePassword`` or ``logoutEverywhere``, a
personal access token revoked or expired). So each link names its
credential (``credential_of``), and ``may_download`` checks all of it in one
query: the file by its unique storage key, joined with its owner and the
credential's row. The S3 control links of a multipart upload die with their
credential too (``credential_is_live``).
"""

from __future__ import annotations

import uuid

from sqlalchemy import ColumnElement, or_
from sqlalchemy.orm import aliased
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from core.auth import Principal
from core.models import Credential, CredentialKind, File, Session, User
from core.time import utcnow

_SESSION = "s"
_PERSONAL = "t"


def credential_of(principal: Principal) -> str:
    """The claim binding a link to ``principal``'s credential: ``s:<session>``, ``t:<token>``."""
    if principal.access_token_id is not None:
        return f"{_PERSONAL}:{principal.access_token_id}"
    if principal.session_id is not None:
        return f"{_SESSION}:{principal.session_id}"
    raise ValueError("a principal without a session or token cannot ask for a link")


def _credential_row(
    credential: str,
) -> tuple[type[Session] | type[Credential], uuid.UUID, list[ColumnElement[bool]]] | None:
    """The table of ``credential``'s row, its id and what keeps it live; None when the
    claim is unreadable (as dead as a revoked credential)."""
    kind, _, raw = credential.partition(":")
    try:
        credential_id = uuid.UUID(raw)
    except ValueError:
        return None
    if kind == _SESSION:
        return Session, credential_id, [col(Session.revoked_at).is_(None)]
    if kind == _PERSONAL:
        live = [
            col(Credential.kind) == CredentialKind.PERSONAL,
            col(Credential.revoked_at).is_(None),
            or_(col(Credential.expires_at).is_(None), col(Credential.expires_at) > utcnow()),
        ]
        return Credential, credential_id, live
    return None


async def may_download(db: AsyncSession, key: str, credential: str) -> uuid.UUID | None:
    """``key``'s file's id if it is live, its owner active and ``credential`` still live.

    One statement; ``file.storage_key`` is unique, so its index finds the row.
    An unreadable ``credential`` is as dead as a revoked one.
    """
    row = _credential_row(credential)
    if row is None:
        return None
    table, credential_id, live = row
    owner = aliased(User)
    holder = aliased(User)
    query = (
        select(col(File.id))
        .join(owner, col(owner.id) == col(File.owner_id))
        .join(table, col(table.id) == credential_id)
        .join(holder, col(holder.id) == col(table.user_id))
        .where(
            col(File.storage_key) == key,
            col(File.trashed_at).is_(None),
            col(owner.is_active).is_(True),
            *live,
            col(holder.is_active).is_(True),
        )
        .limit(1)
    )
    return (await db.exec(query)).first()


async def credential_is_live(db: AsyncSession, credential: str, user_id: uuid.UUID) -> bool:
    """Whether ``credential`` (``credential_of``) is still live and ``user_id``'s, and that
    account active: for links that act for their user rather than serve a file (the
    S3 control links of ``api.multipart_uploads``). One primary-key read."""
    row = _credential_row(credential)
    if row is None:
        return False
    table, credential_id, live = row
    query = (
        select(col(table.id))
        .join(User, col(User.id) == col(table.user_id))
        .where(
            col(table.id) == credential_id,
            col(table.user_id) == user_id,
            *live,
            col(User.is_active).is_(True),
        )
    )
    return (await db.exec(query)).first() is not None
