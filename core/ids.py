"""Opaque global ids, ``base64url("<Type>:<uuid>")``: what clients see as ``id``.

Encoded here so that what Depot sends outside GraphQL (webhook payloads)
names objects as the API does; :mod:`schema.ids` decodes them.
"""

from __future__ import annotations

import base64
import uuid


def encode_id(type_name: str, key: uuid.UUID) -> str:
    raw = f"{type_name}:{key.hex}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")
