"""What admins can see and change: every user, their role, activity and quota."""

from __future__ import annotations

import strawberry
from sqlalchemy import ColumnElement, func
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from core import models, sessions, users
from core.errors import BadUserInput
from core.mail import require_mail
from schema.context import Info
from schema.email import ask_for_reset
from schema.enums import Role
from schema.filters import contains_pattern
from schema.ids import decode_id_of
from schema.nodes import User
from schema.pagination import Connection, paginate
from schema.permissions import IsAdmin
from schema.scalars import BigInt

# The longest email address there can be (RFC 5321's path limit).
EMAIL_MAX = 254


@strawberry.input
class UserFilter:
    email_contains: str | None = None
    role: Role | None = None
    is_active: bool | None = None


def _conditions(filter: UserFilter | None) -> list[ColumnElement[bool]]:
    if filter is None:
        return []
    conditions: list[ColumnElement[bool]] = []
    if filter.email_contains:
        pattern = contains_pattern(
            filter.email_contains.lower(), field="filter.emailContains", most=EMAIL_MAX
        )
        conditions.append(func.lower(col(models.User.email)).like(pattern, escape="\\"))
    if filter.role is not None:
        conditions.append(col(models.User.role) == models.Role(filter.role.value))
    if filter.is_active is not None:
        conditions.append(col(models.User.is_active).is_(filter.is_active))
    return conditions


@strawberry.type
class AdminQuery:
    @strawberry.field(description="Every account, oldest first.", permission_classes=[IsAdmin])
    async def users(
        self,
        info: Info,
        first: int | None = None,
        after: str | None = None,
        filter: UserFilter | None = None,
    ) -> Connection[User]:
        async with info.context.db() as db:
            return await paginate(
                db,
                models.User,
                _conditions(filter),
                first=first,
                after=after,
                to_node=User.from_model,
            )


async def _target(
    db: AsyncSession, info: Info, id: strawberry.ID, *, self_allowed: bool = True
) -> models.User:
    key = decode_id_of("User", id)
    if not self_allowed and key == info.context.require_principal().user.id:
        raise BadUserInput("Admins cannot demote or deactivate themselves.", field="id")
    return await users.get_user(db, key)


async def _save(db: AsyncSession, user: models.User) -> User:
    users.touch(user)
    db.add(user)
    await db.commit()
    return User.from_model(user)


@strawberry.type
class AdminMutation:
    @strawberry.mutation(description="Make a user an admin, or not.", permission_classes=[IsAdmin])
    async def set_user_role(self, info: Info, id: strawberry.ID, role: Role) -> User:
        async with info.context.db() as db:
            user = await _target(db, info, id, self_allowed=False)
            user.role = models.Role(role.value)
            saved = await _save(db, user)
        # What they may do changed: every process's cached sign-in of theirs ends.
        await info.context.signins.changed(user.id)
        return saved

    @strawberry.mutation(
        description="Deactivate a user (their sessions and tokens stop working at once) "
        "or activate them again.",
        permission_classes=[IsAdmin],
    )
    async def set_user_active(self, info: Info, id: strawberry.ID, active: bool) -> User:
        async with info.context.db() as db:
            user = await _target(db, info, id, self_allowed=False)
            user.is_active = active
            if not active:
                await sessions.revoke_sessions(db, col(models.Session.user_id) == user.id)
            saved = await _save(db, user)
        await info.context.signins.changed(user.id)
        return saved

    @strawberry.mutation(description="Set a user's storage quota.", permission_classes=[IsAdmin])
    async def set_user_quota(self, info: Info, id: strawberry.ID, quota_bytes: BigInt) -> User:
        if quota_bytes < 0:
            raise BadUserInput("A quota cannot be negative.", field="quotaBytes")
        async with info.context.db() as db:
            user = await _target(db, info, id)
            user.quota_bytes = quota_bytes
            saved = await _save(db, user)
        await info.context.signins.changed(user.id)  # cached copies show the old quota
        return saved

    @strawberry.mutation(
        description="Mail a user a password-reset link, for one who asks for help; counted "
        "against the same per-address limit as `requestPasswordReset`.",
        permission_classes=[IsAdmin],
    )
    async def send_password_reset(self, info: Info, user_id: strawberry.ID) -> bool:
        require_mail(info.context.settings)
        async with info.context.db() as db:
            user = await _target(db, info, user_id)
        if not user.is_active:
            raise BadUserInput("This account is deactivated; activate it first.", field="userId")
        await ask_for_reset(info.context, user.email)
        return True
