"""What a list of files or jobs may be narrowed to, and in which order: inputs and SQL.

``files``, ``User.files``, ``jobs`` and ``User.jobs`` take these inputs; each
becomes the WHERE conditions of one keyset-paged query (``schema.pagination``).
"""

from __future__ import annotations

import re
import uuid
from enum import Enum

import strawberry
from sqlalchemy import ColumnElement, or_
from sqlmodel import col

from core import models
from core.errors import BadUserInput
from core.paths import MAX_PATH_BYTES, normalize_path
from schema.enums import JobKind, JobStatus
from schema.pagination import CREATED_AT, OrderDirection, Ordering, SortKey, load_int

# -- files -------------------------------------------------------------------------


@strawberry.input(description="Which files to list; every condition given must hold.")
class FileFilter:
    path_prefix: str | None = strawberry.field(
        default=None,
        description='Files at this path or below it, by whole segments: "a/b" matches '
        '"a/b" and "a/b/c", not "a/bc".',
    )
    name_contains: str | None = strawberry.field(
        default=None, description="Part of the file name, ignoring case (`%` and `_` are literal)."
    )
    content_type: str | None = strawberry.field(
        default=None, description='An exact content type, or a family like "image/*".'
    )
    trashed: bool = strawberry.field(
        default=False, description="False (default): live files only; true: the trash only."
    )


@strawberry.enum
class FileOrderField(Enum):
    PATH = "PATH"
    CREATED_AT = "CREATED_AT"
    SIZE = "SIZE"


@strawberry.input(description="How files are ordered; the id breaks ties.")
class FileOrder:
    field: FileOrderField = FileOrderField.CREATED_AT
    direction: OrderDirection = OrderDirection.ASC


_SORT_KEYS = {
    FileOrderField.PATH: SortKey("PATH", "path"),
    FileOrderField.CREATED_AT: CREATED_AT,
    FileOrderField.SIZE: SortKey("SIZE", "size", load=load_int),
}

# type "/" subtype, or type "/*".
_CONTENT_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]*/(\*|[a-z0-9][a-z0-9!#$&^_.+-]*)")


def _escape_like(text: str) -> str:
    """``text`` for a LIKE pattern with ``\\`` as escape: its wildcards match themselves."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def contains_pattern(text: str, *, field: str, most: int) -> str:
    """A LIKE pattern (escape ``\\``) matching values that contain ``text`` literally.

    Longer than ``most`` — more than any value it could match holds — is
    ``BAD_USER_INPUT``: SQLite refuses very long patterns ("pattern too
    complex"), and no database should scan for the impossible.
    """
    if len(text) > most:
        raise BadUserInput(f"Search for at most {most} characters.", field=field)
    return f"%{_escape_like(text)}%"


def file_conditions(owner_id: uuid.UUID, filter: FileFilter | None) -> list[ColumnElement[bool]]:
    """The WHERE conditions for ``owner_id``'s files matching ``filter``."""
    filter = filter or FileFilter()
    trashed = col(models.File.trashed_at)
    conditions = [
        col(models.File.owner_id) == owner_id,
        trashed.is_not(None) if filter.trashed else trashed.is_(None),
    ]
    if filter.path_prefix is not None and filter.path_prefix.strip("/"):
        prefix = normalize_path(filter.path_prefix, field="filter.pathPrefix")
        path = col(models.File.path)
        conditions.append(or_(path == prefix, path.like(_escape_like(prefix) + "/%", escape="\\")))
    if filter.name_contains:
        pattern = contains_pattern(
            filter.name_contains, field="filter.nameContains", most=MAX_PATH_BYTES
        )
        conditions.append(col(models.File.name).ilike(pattern, escape="\\"))
    if filter.content_type is not None:
        wanted = filter.content_type.strip().lower()
        if not _CONTENT_TYPE.fullmatch(wanted):
            raise BadUserInput(
                f"{filter.content_type!r} is not a content type like image/png or image/*.",
                field="filter.contentType",
            )
        content_type = col(models.File.content_type)
        if wanted.endswith("/*"):
            conditions.append(content_type.like(_escape_like(wanted[:-1]) + "%", escape="\\"))
        else:
            conditions.append(content_type == wanted)
    return conditions


def file_ordering(order_by: FileOrder | None) -> Ordering:
    """The keyset ordering ``order_by`` asks for; oldest first when it is not given."""
    order_by = order_by or FileOrder()
    return Ordering(_SORT_KEYS[order_by.field], order_by.direction is OrderDirection.DESC)


# -- jobs --------------------------------------------------------------------------


@strawberry.input(description="Which jobs to list; every condition given must hold.")
class JobFilter:
    status: JobStatus | None = None
    kind: JobKind | None = None


def job_conditions(owner_id: uuid.UUID, filter: JobFilter | None) -> list[ColumnElement[bool]]:
    """The WHERE conditions for ``owner_id``'s jobs matching ``filter``."""
    conditions = [col(models.Job.owner_id) == owner_id]
    if filter is not None and filter.status is not None:
        conditions.append(col(models.Job.status) == filter.status)
    if filter is not None and filter.kind is not None:
        conditions.append(col(models.Job.kind) == filter.kind.value)
    return conditions
