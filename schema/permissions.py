"""Who may see what: permission classes for fields, and ``owned`` for objects by key."""

from __future__ import annotations

import uuid
from typing import Any, TypeVar

from strawberry.permission import BasePermission

from core import models
from core.errors import Forbidden, NotFound
from core.models import Role
from schema.context import Info
from schema.loaders import ByIdLoader

Owned = TypeVar("Owned", models.File, models.Job, models.User)


class IsAuthenticated(BasePermission):
    """The caller presented valid credentials (``UNAUTHENTICATED`` otherwise)."""

    def has_permission(self, source: Any, info: Info, **kwargs: Any) -> bool:
        # Raising here, not returning False, keeps the reason (e.g. an expired token).
        info.context.require_principal()
        return True


class IsSession(BasePermission):
    """The caller signed in with a password (a session's access token).

    What could take over an account — minting tokens, changing the password,
    ending sessions — is refused to personal access tokens (``FORBIDDEN``),
    so a leaked script token cannot outlive its revocation or lock its owner out.
    """

    def has_permission(self, source: Any, info: Info, **kwargs: Any) -> bool:
        if info.context.require_principal().session_id is None:
            raise Forbidden("Sign in with your password to do this; access tokens cannot.")
        return True


class IsAdmin(BasePermission):
    """The caller is a signed-in admin (``FORBIDDEN`` for other users)."""

    def has_permission(self, source: Any, info: Info, **kwargs: Any) -> bool:
        if info.context.require_principal().user.role is not Role.ADMIN:
            raise Forbidden("Only admins may do this.")
        return True


def _visible(row: models.File | models.Job | models.User, viewer: models.User) -> bool:
    if isinstance(row, models.User):  # an account: its own user, and admins
        return row.id == viewer.id or viewer.role is Role.ADMIN
    return row.owner_id == viewer.id


async def owned(loader: ByIdLoader[Owned], viewer: models.User | None, key: uuid.UUID) -> Owned:
    """The row ``key`` of ``loader`` if ``viewer`` may see it; ``NOT_FOUND`` otherwise.

    Files and jobs are their owner's, a user is visible to themselves and to
    admins. Someone else's object gets the very answer an id never issued
    gets, so an id leaks nothing; ``node(id:)`` turns it into null. Nothing is
    read for a signed-out viewer.
    """
    row = await loader.load(key) if viewer is not None else None
    if row is None or viewer is None or not _visible(row, viewer):
        raise NotFound(f"No such {loader.model.__name__.lower()}.")
    return row
