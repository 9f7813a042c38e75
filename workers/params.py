"""Checks shared by the job kinds' parameters; each raises ``BAD_USER_INPUT`` naming the field."""

from __future__ import annotations

import uuid
from typing import Any

from core.errors import BadUserInput
from core.paths import normalize_path


def file_id(params: dict[str, Any], name: str) -> uuid.UUID:
    """The file id under ``name`` (the API passes decoded ids, as UUIDs or strings)."""
    value = params.get(name)
    try:
        return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
    except ValueError:
        raise BadUserInput(f"{name} must name a file.", field=name) from None


def file_ids(params: dict[str, Any], name: str, *, most: int) -> list[uuid.UUID]:
    """A non-empty list of distinct file ids, at most ``most`` of them."""
    values = params.get(name)
    if not isinstance(values, list) or not values:
        raise BadUserInput(f"{name} must list at least one file.", field=name)
    if len(values) > most:
        raise BadUserInput(f"{name} may list at most {most} files.", field=name)
    ids = [file_id({name: value}, name) for value in values]
    if len(set(ids)) != len(ids):
        raise BadUserInput(f"{name} lists a file twice.", field=name)
    return ids


def path(params: dict[str, Any], name: str) -> str:
    """A file or folder path, normalised (``BAD_USER_INPUT`` naming ``name`` if invalid)."""
    return normalize_path(str(params.get(name) or ""), field=name)
