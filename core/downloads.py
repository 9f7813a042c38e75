"""Whether a download link may still serve its file, asked on every request.

A signature and an expiry say only that Depot handed the link out. The
link must also die with what it was handed out for: the file (trashed or
purged), its owner (deactivated) and the credential that asked for it (a
session ended by ``logout``, ``changePassword`` or ``logoutEverywhere``, a
personal access token revoked or expired). So each link names its
credential (``credential_of``), and ``may_download`` checks all of it in one
query: the file by its unique storage key, joined with its owner and the
credential's row.
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


async def may_download(db: AsyncSession, key: str, credential: str) -> uuid.UUID | None:
    """``key``'s file's id if it is live, its owner active and ``credential`` still live.

    One statement; ``file.storage_key`` is unique, so its index finds the row.
    An unreadable ``credential`` is as dead as a revoked one.
    """
    kind, _, raw = credential.partition(":")
    try:
        credential_id = uuid.UUID(raw)
    except ValueError:
        return None
    owner = aliased(User)
    holder = aliased(User)
    query = (
        select(col(File.id))
        .join(owner, col(owner.id) == col(File.owner_id))
        .where(
            col(File.storage_key) == key,
            col(File.trashed_at).is_(None),
            col(owner.is_active).is_(True),
        )
    )
    live: list[ColumnElement[bool]]
    if kind == _SESSION:
        query = query.join(Session, col(Session.id) == credential_id).join(
            holder, col(holder.id) == col(Session.user_id)
        )
        live = [col(Session.revoked_at).is_(None)]
    elif kind == _PERSONAL:
        query = query.join(Credential, col(Credential.id) == credential_id).join(
            holder, col(holder.id) == col(Credential.user_id)
        )
        live = [
            col(Credential.kind) == CredentialKind.PERSONAL,
            col(Credential.revoked_at).is_(None),
            or_(col(Credential.expires_at).is_(None), col(Credential.expires_at) > utcnow()),
        ]
    else:
        return None
    query = query.where(*live, col(holder.is_active).is_(True)).limit(1)
    return (await db.exec(query)).first()
