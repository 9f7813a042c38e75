"""Password rules and Argon2id hashing.

Hashing is deliberately slow (tens of milliseconds, tens of MiB), so it runs
in a worker thread to keep the event loop free.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

import anyio.to_thread
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from core.errors import BadUserInput

MIN_LENGTH = 8
MAX_LENGTH = 1024


@cache
def _common_passwords() -> frozenset[str]:
    text = files("core").joinpath("common_passwords.txt").read_text(encoding="utf-8")
    return frozenset(line for line in text.splitlines() if line and not line.startswith("#"))


def check_password_rules(password: str, *, field: str = "password") -> None:
    """Raise ``BAD_USER_INPUT`` naming ``field`` for a password Depot won't accept."""
    if len(password) < MIN_LENGTH:
        raise BadUserInput(f"Passwords need at least {MIN_LENGTH} characters.", field=field)
    if len(password) > MAX_LENGTH:
        raise BadUserInput(f"Passwords may have at most {MAX_LENGTH} characters.", field=field)
    if password.lower() in _common_passwords():
        raise BadUserInput(
            "This password is among the most common ones; choose another.", field=field
        )


@cache
def hasher(memory_kib: int, iterations: int) -> PasswordHasher:
    return PasswordHasher(time_cost=iterations, memory_cost=memory_kib, parallelism=1)


@cache
def _dummy_hash(ph: PasswordHasher) -> str:
    return ph.hash("depot: no such account")


async def hash_password(ph: PasswordHasher, password: str) -> str:
    return await anyio.to_thread.run_sync(ph.hash, password)


async def verify_password(ph: PasswordHasher, password_hash: str | None, password: str) -> bool:
    """Check a password; with no hash, spend the same time and answer False.

    Verifying against a dummy hash for unknown accounts keeps sign-in equally
    slow whether the email exists or not.
    """

    def verify() -> bool:
        try:
            return ph.verify(password_hash or _dummy_hash(ph), password) and bool(password_hash)
        except (VerificationError, InvalidHashError):
            return False

    return await anyio.to_thread.run_sync(verify)


def needs_rehash(ph: PasswordHasher, password_hash: str) -> bool:
    """True when the hash was made with other parameters than the current ones."""
    try:
        return ph.check_needs_rehash(password_hash)
    except InvalidHashError:
        return True
