"""Permission classes for fields: signed in, signed in with a session, and admin."""

from __future__ import annotations

from typing import Any

from strawberry.permission import BasePermission

from core.errors import Forbidden
from core.models import Role
from schema.context import Info


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
