"""Pipeline templates: a user's saved steps, by name, started later on any files.

The steps are checked when saved (by the caller, against the kinds) and kept
as :class:`core.pipelines.Step` data; starting one checks them again against
the files given. A template is its owner's alone: for anyone else it does not
exist (``NOT_FOUND``); two of one owner's templates never share a name.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy.exc import IntegrityError
from sqlmodel.ext.asyncio.session import AsyncSession

from core.errors import BadUserInput, Conflict, NotFound
from core.models import PipelineTemplate
from core.pipelines import Step
from core.time import utcnow

MAX_NAME = 100


def _name(name: str) -> str:
    name = name.strip()
    if not 1 <= len(name) <= MAX_NAME:
        raise BadUserInput(f"A template's name has 1 to {MAX_NAME} characters.", field="name")
    return name


async def get_owned(
    db: AsyncSession, owner_id: uuid.UUID, template_id: uuid.UUID
) -> PipelineTemplate:
    """``owner_id``'s template, or ``NOT_FOUND`` (for another user's too)."""
    template = await db.get(PipelineTemplate, template_id, populate_existing=True)
    if template is None or template.owner_id != owner_id:
        raise NotFound("No such pipeline template.")
    return template


async def _save(db: AsyncSession, template: PipelineTemplate) -> PipelineTemplate:
    db.add(template)
    try:
        await db.commit()
    except IntegrityError:
        await db.rollback()
        raise Conflict(f"You already have a template named {template.name!r}.") from None
    await db.refresh(template)
    return template


async def create(
    db: AsyncSession, owner_id: uuid.UUID, name: str, steps: Sequence[Step]
) -> PipelineTemplate:
    """Save checked ``steps`` under ``name``; commits. ``CONFLICT`` for a name in use."""
    template = PipelineTemplate(
        owner_id=owner_id, name=_name(name), steps=[step.to_data() for step in steps]
    )
    return await _save(db, template)


async def update(
    db: AsyncSession,
    owner_id: uuid.UUID,
    template_id: uuid.UUID,
    *,
    name: str | None = None,
    steps: Sequence[Step] | None = None,
) -> PipelineTemplate:
    """Rename a template or replace its steps; commits. Pipelines already started keep theirs."""
    template = await get_owned(db, owner_id, template_id)
    if name is not None:
        template.name = _name(name)
    if steps is not None:
        template.steps = [step.to_data() for step in steps]
    template.updated_at = utcnow()
    return await _save(db, template)


async def delete(db: AsyncSession, owner_id: uuid.UUID, template_id: uuid.UUID) -> None:
    """Delete a template; commits."""
    template = await get_owned(db, owner_id, template_id)
    await db.delete(template)
    await db.commit()


def steps_of(template: PipelineTemplate) -> list[Step]:
    return [Step.from_data(data) for data in template.steps]
