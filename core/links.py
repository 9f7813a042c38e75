"""Signed, expiring links to Depot's own byte routes (local and memory storage).

A link is a JWT in the URL path, signed with the secret key, for one purpose
(``download`` or ``upload``) and one storage key. S3 needs none of this: it
presigns its own URLs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal
from urllib.parse import urljoin

import jwt

Purpose = Literal["download", "upload"]
ROUTES: dict[Purpose, str] = {"download": "/files/download/", "upload": "/files/upload/"}
_ALGORITHM = "HS256"


class LinkInvalid(Exception):
    """Tampered with, or not a link of ours for this purpose."""


class LinkExpired(Exception):
    """A genuine link whose time is up."""


@dataclass(frozen=True)
class LinkSigner:
    """Signs and verifies links for one secret and one public base URL."""

    secret: str
    base_url: str

    def sign(self, purpose: Purpose, expires_at: datetime, **claims: str | int) -> str:
        token = jwt.encode(
            {**claims, "aud": f"depot-{purpose}", "exp": expires_at},
            self.secret,
            algorithm=_ALGORITHM,
        )
        return urljoin(self.base_url, ROUTES[purpose] + token)

    def verify(self, purpose: Purpose, token: str) -> dict[str, object]:
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
