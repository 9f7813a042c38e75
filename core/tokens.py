"""Access tokens (short-lived JWTs) and opaque secrets (refresh and personal tokens).

Access tokens are HS256 JWTs signed with the secret key; the algorithm is
pinned on decode, and ``iss``, ``aud``, ``exp``, ``iat``, ``sub``, ``jti`` are
required. Opaque tokens are 256 random bits with a readable prefix; only
their SHA-256 is stored.
"""

from __future__ import annotations

import functools
import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt

from core.errors import Unauthenticated
from core.settings import Settings

ALGORITHM = "HS256"
AUDIENCE = "depot"
CLOCK_SKEW = timedelta(seconds=10)
REFRESH_PREFIX = "dpr_"
PERSONAL_PREFIX = "dpt_"


@dataclass(frozen=True)
class AccessClaims:
    user_id: uuid.UUID
    session_id: uuid.UUID
    expires_at: datetime


def issue_access_token(
    settings: Settings, user_id: uuid.UUID, session_id: uuid.UUID, now: datetime
) -> tuple[str, datetime]:
    expires = now + timedelta(minutes=settings.access_token_minutes)
    claims = {
        "iss": str(settings.public_base_url),
        "aud": AUDIENCE,
        "sub": str(user_id),
        "sid": str(session_id),
        "jti": uuid.uuid4().hex,
        "iat": now,
        "exp": expires,
    }
    return jwt.encode(claims, settings.secret, algorithm=ALGORITHM), expires


def decode_access_token(settings: Settings, token: str) -> AccessClaims:
    """Verify an access token, or raise ``UNAUTHENTICATED`` saying why.

    A token verified once is remembered (:func:`_verified`): its signature and
    claims cannot change, so only its expiry is checked again, against now.
    That takes PyJWT's decoding (about a tenth of a ``me`` request's CPU) off
    every request but a token's first; a token refused is refused again in full.
    """
    claims = _verified(settings.secret, str(settings.public_base_url), token)
    if has_expired(claims.expires_at, datetime.now(UTC)):
        raise Unauthenticated("The access token has expired; refresh the session.")
    return claims


# Tokens live minutes and a client reuses its one: a few thousand callers' worth.
@functools.lru_cache(maxsize=4096)
def _verified(secret: str, issuer: str, token: str) -> AccessClaims:
    """``token``'s claims once its signature and claims are verified (cached: see above)."""
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            audience=AUDIENCE,
            issuer=issuer,
            leeway=CLOCK_SKEW,
            options={"require": ["iss", "aud", "exp", "iat", "sub", "jti", "sid"]},
        )
        return AccessClaims(
            uuid.UUID(claims["sub"]),
            uuid.UUID(claims["sid"]),
            datetime.fromtimestamp(claims["exp"], UTC),
        )
    except jwt.ExpiredSignatureError:
        raise Unauthenticated("The access token has expired; refresh the session.") from None
    except (jwt.InvalidTokenError, ValueError, TypeError):
        raise Unauthenticated("The access token is invalid.") from None


def has_expired(expires_at: datetime, now: datetime) -> bool:
    """Whether an access token that expires at ``expires_at`` is past it, leeway included."""
    return expires_at + CLOCK_SKEW <= now


def new_opaque_token(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    """The stored form of an opaque token. 256 random bits need no salt or stretching."""
    return hashlib.sha256(token.encode()).hexdigest()
