"""Opaque global ids: ``base64url("<Type>:<uuid>")``, resolved by ``node(id:)``."""

from __future__ import annotations

import base64
import binascii
import uuid

from core.errors import BadUserInput
from core.ids import encode_id

__all__ = ["decode_id", "decode_id_of", "encode_id"]


def decode_id(global_id: str, *, field: str = "id") -> tuple[str, uuid.UUID]:
    """Split a global id into its type name and key, or raise ``BAD_USER_INPUT``."""
    try:
        padded = global_id + "=" * (-len(global_id) % 4)
        type_name, _, key = base64.urlsafe_b64decode(padded).decode().partition(":")
        return type_name, uuid.UUID(hex=key)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadUserInput(f"{global_id!r} is not a valid id", field=field) from None


def decode_id_of(type_name: str, global_id: str, *, field: str = "id") -> uuid.UUID:
    """Decode an id that must name a ``type_name``; any other type is invalid input."""
    found, key = decode_id(global_id, field=field)
    if found != type_name:
        raise BadUserInput(f"{global_id!r} is not the id of a {type_name}", field=field)
    return key
