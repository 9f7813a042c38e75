"""What mail is for: forgotten passwords, verified addresses, and notification preferences.

Every mail goes out from an actor (:mod:`workers.mail`); these resolvers only
hand it a message, after their commit. In production without an SMTP server
they answer ``FEATURE_DISABLED`` (:func:`core.mail.require_mail`) instead of
letting mail vanish.
"""

from __future__ import annotations

import strawberry

from core import passwords, sessions, users
from core.errors import BadUserInput, Conflict, FeatureDisabled, Unauthenticated
from core.mail import require_mail
from core.ratelimit import Action
from schema.auth import AuthPayload, payload
from schema.context import Context, Info
from schema.nodes import NotificationPreferences
from schema.permissions import IsAuthenticated, IsSession
from schema.ratelimits import check_failures, count, count_account, failed
from workers import mail


@strawberry.input(description="Each preference left out stays as it is.")
class NotificationPreferencesInput:
    job_succeeded: bool | None = None
    job_failed: bool | None = None
    storage_nearly_full: bool | None = None
    webhook_disabled: bool | None = None


async def ask_for_reset(context: Context, email: str) -> None:
    """Count and hand on a reset for the normalised ``email``, whoever asks.

    The same two steps whether an account has the address or not: the
    lookup is the actor's, after the answer.
    """
    await count_account(context, Action.PASSWORD_RESET, email)
    await context.jobs.send_to(mail.RESET, email)


async def ask_for_verification(context: Context, user_id: str, email: str) -> None:
    await context.jobs.send_to(mail.VERIFY, user_id, email)


@strawberry.type
class EmailMutation:
    @strawberry.mutation(
        description="Mail a password-reset link to `email` if an account has it. Always "
        "`true`, in the same time either way, so nobody learns which addresses have accounts.",
    )
    async def request_password_reset(self, info: Info, email: str) -> bool:
        require_mail(info.context.settings)
        account = users.normalize_email(email)
        await ask_for_reset(info.context, account)
        return True

    @strawberry.mutation(
        description="Set a new password with the token from a reset mail, and sign in. Every "
        "other session ends and every personal access token is revoked, as after "
        "`changePassword`. The token works once, until it expires or a newer mail replaces it.",
    )
    async def reset_password(self, info: Info, token: str, new_password: str) -> AuthPayload:
        context = info.context
        async with context.db() as db:
            user = await sessions.reset_password(db, context.settings, token, new_password)
            tokens = await sessions.start_session(db, context.settings, user)
            await db.commit()
        await context.signins.changed(user.id)
        return payload(user, tokens)

    @strawberry.mutation(
        description="Confirm an address with the token from a verification mail: the account's "
        "own (`User.emailVerified`), or the one `changeEmail` asked for, which then replaces "
        "the old one (told so by mail). No sign-in needed: the token is the proof.",
    )
    async def verify_email(self, info: Info, token: str) -> bool:
        context = info.context
        async with context.db() as db:
            user, former = await users.verify_email(db, token)
            await db.commit()
        # The address, or its being verified, changed: cached copies of the account end.
        await context.signins.changed(user.id)
        if former is not None:
            notice = mail.outgoing(former, "email_changed", {"new_email": user.email})
            await context.jobs.send_to(mail.SEND, notice)
        return True

    @strawberry.mutation(
        description="Mail another verification link to your address; `false` when it is "
        "verified already.",
        permission_classes=[IsAuthenticated],
    )
    async def resend_verification(self, info: Info) -> bool:
        context = info.context
        require_mail(context.settings)
        if not context.settings.email_verification:
            raise FeatureDisabled(
                "Address verification is switched off (DEPOT_EMAIL_VERIFICATION)."
            )
        user = context.require_principal().user
        if user.email_verified_at is not None:
            return False
        await count(context, Action.VERIFICATION_MAIL)
        await ask_for_verification(context, str(user.id), user.email)
        return True

    @strawberry.mutation(
        description="Change your address: a verification link goes to `newEmail`, and the "
        "address changes once it is followed (the old one is told). Needs your password.",
        permission_classes=[IsSession],
    )
    async def change_email(self, info: Info, new_email: str, password: str) -> bool:
        context = info.context
        settings = context.settings
        require_mail(settings)
        principal = context.require_principal()
        new = users.normalize_email(new_email, field="newEmail")
        # A wrong password costs a full hash: counted as changePassword's are.
        await check_failures(context, Action.PASSWORD_FAILURE)
        async with context.db() as db:
            user = await users.get_user(db, principal.user.id)
            ph = passwords.hasher(
                settings.password_hash_memory_kib, settings.password_hash_iterations
            )
            if not await passwords.verify_password(ph, user.password_hash, password):
                await failed(context, Action.PASSWORD_FAILURE)
                raise Unauthenticated("The password is wrong.")
            if new == user.email:
                raise BadUserInput("This is your address already.", field="newEmail")
            if await users.find_by_email(db, new) is not None:
                raise Conflict("An account with this email already exists.")
        await count(context, Action.VERIFICATION_MAIL)
        await ask_for_verification(context, str(user.id), new)
        return True

    @strawberry.mutation(
        description="Choose which notifications reach you by mail.",
        permission_classes=[IsAuthenticated],
    )
    async def set_notification_preferences(
        self, info: Info, input: NotificationPreferencesInput
    ) -> NotificationPreferences:
        context = info.context
        require_mail(context.settings)
        async with context.db() as db:
            user = await users.get_user(db, context.require_principal().user.id)
            for name, column in (
                ("job_succeeded", "mail_job_succeeded"),
                ("job_failed", "mail_job_failed"),
                ("storage_nearly_full", "mail_storage_full"),
                ("webhook_disabled", "mail_webhook_disabled"),
            ):
                value = getattr(input, name)
                if value is not None:
                    setattr(user, column, value)
            users.touch(user)
            db.add(user)
            await db.commit()
        context.signins.forget(user.id)  # not a credential: other replicas' copies lapse
        return NotificationPreferences.from_model(user)
