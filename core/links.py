"""Signed, expiring tokens that let the holder of a link do one thing to one object.

A token is a JWT signed with the secret key, for one purpose (``download``,
``upload``, ``multipart``, …) and carrying the storage key it is for. Which route a token goes
in, and at what address, is the API's business (``api.files``); S3 needs
none of this: it presigns its own URLs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import jwt

Purpose = Literal["download", "upload", "variant", "unsubscribe", "multipart"]
_ALGORITHM = "HS256"


class LinkInvalid(Exception):
    """Tampered with, or not a link of ours for this purpose."""


class LinkExpired(Exception):
    """A genuine link whose time is up."""


@dataclass(frozen=True)
class LinkSigner:
    """Signs and verifies link tokens with one secret; build one per process."""

    secret: str

    def sign(self, purpose: Purpose, expires_at: datetime, **claims: str | int) -> str:
        """A token for ``purpose`` carrying ``claims`` (``key`` among them) until ``expires_at``."""
        return jwt.encode(
            {**claims, "aud": f"depot-{purpose}", "exp": expires_at},
            self.secret,
            algorithm=_ALGORITHM,
        )

    def verify(self, purpose: Purpose, token: str) -> dict[str, object]:
        """The claims of a genuine, unexpired ``purpose`` token; ``LinkInvalid`` or
        ``LinkExpired`` otherwise."""
        try:
            claims: dict[str, object] = jwt.decode(
                token,
                self.secret,
                algorithms=[_ALGORITHM],
                audience=f"depot-{purpose}",
                options={"require": ["exp", "aud", "key"]},
            )
        except jwt.ExpiredSignatureError:
            raise LinkExpired from None
        except jwt.InvalidTokenError:
            raise LinkInvalid from None
        return claims
