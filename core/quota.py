"""Storage quota: bytes are reserved before they are written, atomically.

``user.used_bytes`` counts every byte a user's files (trash included) and
open upload tickets hold. A reservation is one conditional UPDATE, so two
uploads racing for the last free bytes cannot both get them, on SQLite or
PostgreSQL, on one replica or many. Whoever reserves releases what it does
not end up keeping.
"""

from __future__ import annotations

import uuid

from sqlalchemy import update
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from core.errors import QuotaExceeded
from core.models import User


async def free_bytes(db: AsyncSession, user_id: uuid.UUID) -> int:
    """What the user may still store (0 for a user who is gone)."""
    user = await db.get(User, user_id)
    return 0 if user is None else user.quota_bytes - user.used_bytes


async def reserve(db: AsyncSession, user_id: uuid.UUID, size: int, *, commit: bool = True) -> None:
    """Add ``size`` bytes to the user's usage, or raise ``QUOTA_EXCEEDED``; commits.

    ``commit=False``: the reservation joins the caller's transaction (a job's
    outputs, reserved with the rows that hold them), which rolls it back on
    ``QUOTA_EXCEEDED`` or any other error.
    """
    if size <= 0:
        return
    result = await db.exec(
        update(User)
        .where(col(User.id) == user_id, col(User.used_bytes) + size <= col(User.quota_bytes))
        .values(used_bytes=col(User.used_bytes) + size)
    )
    if commit:
        await db.commit()
    if result.rowcount != 1:
        raise QuotaExceeded("This file would go over your storage quota.")


async def release(db: AsyncSession, user_id: uuid.UUID, size: int) -> None:
    """Give back ``size`` reserved or freed bytes (not committed)."""
    if size <= 0:
        return
    await db.exec(
        update(User).where(col(User.id) == user_id).values(used_bytes=col(User.used_bytes) - size)
    )
