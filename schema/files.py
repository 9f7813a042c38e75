"""The ``File`` type: a user's file, its bytes behind a signed, expiring link."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Self

import strawberry
from strawberry.scalars import JSON

from core import models
from schema.context import Info
from schema.ids import encode_id
from schema.node import Node
from schema.scalars import BigInt


@strawberry.type
class File(Node):
    """A file owned by one user; to anyone else it does not exist."""

    path: str
    name: str
    size: BigInt
    content_type: str
    sha256: str
    metadata: JSON
    created_at: datetime
    updated_at: datetime
    trashed_at: datetime | None
    owner_id: strawberry.Private[uuid.UUID]
    storage_key: strawberry.Private[str]

    @classmethod
    def from_model(cls, file: models.File) -> Self:
        return cls(
            id=strawberry.ID(encode_id("File", file.id)),
            path=file.path,
            name=file.name,
            size=BigInt(file.size),
            content_type=file.content_type,
            sha256=file.sha256,
            metadata=JSON(file.meta),
            created_at=file.created_at,
            updated_at=file.updated_at,
            trashed_at=file.trashed_at,
            owner_id=file.owner_id,
            storage_key=file.storage_key,
        )

    @strawberry.field(
        description="A link that downloads the bytes until it expires "
        "(`DEPOT_DOWNLOAD_URL_MINUTES`); ask again for a fresh one."
    )
    async def download_url(self, info: Info) -> str:
        settings = info.context.settings
        return await info.context.storage.download_url(
            self.storage_key,
            filename=self.name,
            content_type=self.content_type,
            expires_in=timedelta(minutes=settings.download_url_minutes),
        )
