"""Registration, sign-in, sessions and the signed-in user's own account."""

from __future__ import annotations

import uuid
from datetime import datetime

import strawberry
from sqlmodel import col

from core import access_tokens, models, sessions, users
from core.errors import Unauthenticated
from core.models import Session
from core.ratelimit import Action
from core.sessions import Tokens
from schema.context import Context, Info
from schema.nodes import User
from schema.permissions import IsAuthenticated, IsSession
from schema.ratelimits import check_failures, count, failed
from workers import mail


@strawberry.input
class RegisterInput:
    email: str
    password: str
    display_name: str


@strawberry.input
class LoginInput:
    email: str
    password: str


@strawberry.type
class AuthPayload:
    """A new session: send ``accessToken`` as a bearer token, keep ``refreshToken`` safe."""

    access_token: str
    access_token_expires_at: datetime
    refresh_token: str
    user: User


def payload(user: models.User, tokens: Tokens) -> AuthPayload:
    return AuthPayload(
        access_token=tokens.access_token,
        access_token_expires_at=tokens.access_token_expires_at,
        refresh_token=tokens.refresh_token,
        user=User.from_model(user),
    )


async def _revoked(context: Context, user_id: uuid.UUID) -> None:
    """Once committed: forget the user's cached sign-ins and have their sockets recheck,
    here at once and, through the event bus, in every other process."""
    await context.signins.changed(user_id)


@strawberry.type
class AuthMutation:
    @strawberry.mutation(
        description="Create an account and sign in; a verification link goes to its address."
    )
    async def register(self, info: Info, input: RegisterInput) -> AuthPayload:
        context = info.context
        await count(context, Action.REGISTER)
        async with context.db() as db:
            user = await users.create_user(
                db,
                context.settings,
                email=input.email,
                password=input.password,
                display_name=input.display_name,
            )
            tokens = await sessions.start_session(db, context.settings, user)
            await db.commit()
        if context.settings.verifies_email:
            await context.jobs.send_to(mail.VERIFY, str(user.id), user.email)
        return payload(user, tokens)

    @strawberry.mutation(description="Sign in with email and password.")
    async def login(self, info: Info, input: LoginInput) -> AuthPayload:
        context = info.context
        async with context.db() as db:
            user, tokens = await sessions.sign_in(
                db,
                context.settings,
                context.login_limiter,
                email=input.email,
                password=input.password,
                address=context.client_address,
            )
            await db.commit()
        return payload(user, tokens)

    @strawberry.mutation(
        description="Trade a refresh token for a new pair; each refresh token works once."
    )
    async def refresh_session(self, info: Info, refresh_token: str) -> AuthPayload:
        context = info.context
        # Refused refreshes are counted per address: guessing costs a query each.
        await check_failures(context, Action.REFRESH_FAILURE)
        try:
            async with context.db() as db:
                user, tokens = await sessions.refresh_session(db, context.settings, refresh_token)
                await db.commit()
        except Unauthenticated as exc:
            if isinstance(exc, sessions.RefreshTokenReused):
                await _revoked(context, exc.user_id)  # the thief's access tokens end too
            await failed(context, Action.REFRESH_FAILURE)
            raise
        return payload(user, tokens)

    @strawberry.mutation(description="End the session a refresh token belongs to.")
    async def logout(self, info: Info, refresh_token: str) -> bool:
        # An unknown refresh token is a guess, as in `refreshSession`.
        await check_failures(info.context, Action.REFRESH_FAILURE)
        async with info.context.db() as db:
            user_id = await sessions.end_session_of_refresh_token(db, refresh_token)
            await db.commit()
        if user_id is None:
            await failed(info.context, Action.REFRESH_FAILURE)
            return False
        await _revoked(info.context, user_id)
        return True

    @strawberry.mutation(
        description="End every session of the signed-in user.",
        permission_classes=[IsSession],
    )
    async def logout_everywhere(self, info: Info) -> bool:
        user = info.context.require_principal().user
        async with info.context.db() as db:
            await sessions.revoke_sessions(db, col(Session.user_id) == user.id)
            await access_tokens.revoke_all_access_tokens(db, user.id)
            await db.commit()
        await _revoked(info.context, user.id)
        return True

    @strawberry.mutation(
        description="Change the signed-in user's display name.",
        permission_classes=[IsAuthenticated],
    )
    async def update_profile(self, info: Info, display_name: str) -> User:
        principal = info.context.require_principal()
        async with info.context.db() as db:
            user = await users.get_user(db, principal.user.id)
            user.display_name = users.normalize_display_name(display_name)
            users.touch(user)
            db.add(user)
            await db.commit()
        # Not a credential: other replicas' cached copies show the old name for their TTL.
        info.context.signins.forget(user.id)
        return User.from_model(user)

    @strawberry.mutation(
        description="Change the password; every other session of the user ends.",
        permission_classes=[IsSession],
    )
    async def change_password(self, info: Info, current_password: str, new_password: str) -> bool:
        principal = info.context.require_principal()
        # Each wrong current password costs a full hash: counted per user and address.
        await check_failures(info.context, Action.PASSWORD_FAILURE)
        async with info.context.db() as db:
            user = await users.get_user(db, principal.user.id)
            try:
                await sessions.change_password(
                    db,
                    info.context.settings,
                    user,
                    current_password,
                    new_password,
                    keep_session=principal.session_id,
                )
            except Unauthenticated:
                await failed(info.context, Action.PASSWORD_FAILURE)
                raise
            await db.commit()
        await _revoked(info.context, user.id)
        return True
