"""Single-use tokens sent by mail: password resets and address verifications.

A token is 256 random bits (:func:`core.tokens.new_opaque_token`); the
``email_token`` row keeps only its SHA-256, the address it was sent to, and
when it expires. Issuing one ends every earlier token of the same purpose of
its user (a newer mail supersedes the older), and redeeming it is one
conditional ``UPDATE … WHERE used_at IS NULL``, so of two clicks on one link
only one wins.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Final

from sqlalchemy import update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from core import tokens
from core.errors import BadUserInput
from core.models import EmailToken, TokenPurpose
from core.time import utcnow

# Readable prefixes, so a token pasted in the wrong place is recognised.
PREFIXES: Final = {TokenPurpose.RESET: "dpw_", TokenPurpose.VERIFY: "dpv_"}

INVALID: Final = "This link is not valid; ask for a new mail."
USED: Final = "This link was used already, or a newer mail replaced it; ask for a new mail."
EXPIRED: Final = "This link has expired; ask for a new mail."


async def issue(
    db: AsyncSession,
    user_id: uuid.UUID,
    purpose: TokenPurpose,
    email: str,
    lifetime: timedelta,
) -> str:
    """A new token of ``purpose`` for ``email`` (flushed, not committed); the older ones end."""
    now = utcnow()
    await db.exec(
        update(EmailToken)
        .where(
            col(EmailToken.user_id) == user_id,
            col(EmailToken.purpose) == purpose,
            col(EmailToken.used_at).is_(None),
        )
        .values(used_at=now)
    )
    secret = tokens.new_opaque_token(PREFIXES[purpose])
    db.add(
        EmailToken(
            user_id=user_id,
            purpose=purpose,
            token_hash=tokens.token_hash(secret),
            email=email,
            created_at=now,
            expires_at=now + lifetime,
        )
    )
    await db.flush()
    return secret


async def redeem(db: AsyncSession, secret: str, purpose: TokenPurpose) -> EmailToken:
    """Use a token (not yet committed), or ``BAD_USER_INPUT`` on ``token`` saying why not."""
    token = (
        await db.exec(
            select(EmailToken).where(
                EmailToken.token_hash == tokens.token_hash(secret), EmailToken.purpose == purpose
            )
        )
    ).first()
    if token is None:
        raise BadUserInput(INVALID, field="token")
    now = utcnow()
    if token.used_at is not None:
        raise BadUserInput(USED, field="token")
    if token.expires_at <= now:
        raise BadUserInput(EXPIRED, field="token")
    claimed = await db.exec(
        update(EmailToken)
        .where(col(EmailToken.id) == token.id, col(EmailToken.used_at).is_(None))
        .values(used_at=now)
    )
    if claimed.rowcount != 1:
        raise BadUserInput(USED, field="token")
    return token
