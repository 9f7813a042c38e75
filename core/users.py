"""Accounts: normalising input, creating users, and the changes admins make."""

from __future__ import annotations

import unicodedata
import uuid

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from core import email_tokens, passwords
from core.errors import BadUserInput, Conflict, EmailNotVerified, NotFound
from core.models import Role, TokenPurpose, User
from core.settings import Settings
from core.text import has_invisible_controls
from core.time import utcnow

DISPLAY_NAME_MAX = 100


def normalize_email(email: str, *, field: str = "email") -> str:
    """Trim, check and lowercase an email address, or raise ``BAD_USER_INPUT``."""
    try:
        checked = validate_email(email.strip(), check_deliverability=False)
    except EmailNotValidError as exc:
        raise BadUserInput(f"Invalid email address: {exc}", field=field) from None
    return checked.normalized.lower()


def account_key(email: str) -> str | None:
    """The normalised form of a typed email for looking an account up; None if invalid."""
    try:
        return normalize_email(email)
    except BadUserInput:
        return None


def normalize_display_name(name: str, *, field: str = "displayName") -> str:
    name = unicodedata.normalize("NFC", name).strip()
    if not name:
        raise BadUserInput("The display name may not be empty.", field=field)
    if len(name) > DISPLAY_NAME_MAX:
        raise BadUserInput(
            f"The display name may have at most {DISPLAY_NAME_MAX} characters.", field=field
        )
    if has_invisible_controls(name):
        raise BadUserInput("The display name contains invisible control characters.", field=field)
    return name


async def find_by_email(session: AsyncSession, email: str) -> User | None:
    result = await session.exec(select(User).where(func.lower(User.email) == email.lower()))
    return result.first()


async def create_user(
    session: AsyncSession,
    settings: Settings,
    *,
    email: str,
    password: str,
    display_name: str,
    role: Role = Role.USER,
) -> User:
    """Validate and add a user (not yet committed); ``CONFLICT`` if the email is taken."""
    email = normalize_email(email)
    display_name = normalize_display_name(display_name)
    passwords.check_password_rules(password)
    if await find_by_email(session, email) is not None:
        raise Conflict("An account with this email already exists.")
    ph = passwords.hasher(settings.password_hash_memory_kib, settings.password_hash_iterations)
    user = User(
        email=email,
        display_name=display_name,
        password_hash=await passwords.hash_password(ph, password),
        role=role,
        quota_bytes=settings.default_quota_bytes,
    )
    session.add(user)
    try:
        await session.flush()
    except IntegrityError:
        # Another registration with the same email won the race.
        raise Conflict("An account with this email already exists.") from None
    return user


async def get_user(session: AsyncSession, user_id: uuid.UUID) -> User:
    user = await session.get(User, user_id)
    if user is None:
        raise NotFound("No such user.")
    return user


def touch(user: User) -> None:
    user.updated_at = utcnow()


def require_verified(settings: Settings, user: User) -> None:
    """``EMAIL_NOT_VERIFIED`` if ``user`` may not upload or start jobs before verifying.

    Only when ``DEPOT_UNVERIFIED_MAY_UPLOAD`` is off, verification on, and mail
    can go out (nobody could verify otherwise). Costs nothing: the signed-in user is loaded.
    """
    verified = user.email_verified_at is not None or not settings.verifies_email
    if not verified and not settings.unverified_may_upload:
        raise EmailNotVerified(
            "Verify your email address first: follow the link in the mail we sent "
            "(`resendVerification` sends another)."
        )


async def verify_email(db: AsyncSession, secret: str) -> tuple[User, str | None]:
    """Redeem a verification token (not yet committed): the user, and their former address
    when the token confirmed a change (``CONFLICT`` if someone took it meanwhile)."""
    token = await email_tokens.redeem(db, secret, TokenPurpose.VERIFY)
    user = await get_user(db, token.user_id)
    now = utcnow()
    former = None
    if token.email != user.email:
        if await find_by_email(db, token.email) is not None:
            raise Conflict("An account with this email already exists.")
        former, user.email = user.email, token.email
    user.email_verified_at = now
    user.updated_at = now
    db.add(user)
    try:
        await db.flush()
    except IntegrityError:
        raise Conflict("An account with this email already exists.") from None
    return user, former
