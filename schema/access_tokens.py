"""Personal access tokens: created, listed and revoked by their owner."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Self

import strawberry
from sqlmodel import col

from core import access_tokens
from core.models import Credential, CredentialKind
from core.ratelimit import Action
from schema.context import Info
from schema.ids import decode_id_of, encode_id
from schema.node import Node
from schema.pagination import Connection, paginate
from schema.permissions import IsAuthenticated, IsSession
from schema.ratelimits import count


@strawberry.type
class AccessToken(Node):
    """A personal access token; its secret is shown once, when it is created."""

    name: str
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None

    @classmethod
    def from_model(cls, credential: Credential) -> Self:
        assert credential.name is not None
        return cls(
            id=strawberry.ID(encode_id("AccessToken", credential.id)),
            key=credential.id,
            name=credential.name,
            created_at=credential.created_at,
            last_used_at=credential.last_used_at,
            expires_at=credential.expires_at,
        )


@strawberry.type
class CreatedAccessToken:
    token: str = strawberry.field(description="The secret: shown now and never again.")
    access_token: AccessToken


@strawberry.type
class AccessTokenQuery:
    @strawberry.field(
        description="The signed-in user's live personal access tokens.",
        permission_classes=[IsAuthenticated],
    )
    async def access_tokens(
        self, info: Info, first: int | None = None, after: str | None = None
    ) -> Connection[AccessToken]:
        user = info.context.require_principal().user
        async with info.context.db() as db:
            return await paginate(
                db,
                Credential,
                [
                    col(Credential.user_id) == user.id,
                    col(Credential.kind) == CredentialKind.PERSONAL,
                    col(Credential.revoked_at).is_(None),
                ],
                first=first,
                after=after,
                to_node=AccessToken.from_model,
            )


@strawberry.type
class AccessTokenMutation:
    @strawberry.mutation(
        description="Create a token for scripts, sent as `Authorization: Bearer dpt_…`.",
        permission_classes=[IsSession],
    )
    async def create_access_token(
        self, info: Info, name: str, expires_in_days: int | None = None
    ) -> CreatedAccessToken:
        user = info.context.require_principal().user
        await count(info.context, Action.ACCESS_TOKEN)
        async with info.context.db() as db:
            credential, secret = await access_tokens.create_access_token(
                db, info.context.settings, user, name, expires_in_days
            )
            await db.commit()
        return CreatedAccessToken(token=secret, access_token=AccessToken.from_model(credential))

    @strawberry.mutation(
        description="Revoke a token; it stops working at once.",
        permission_classes=[IsAuthenticated],
    )
    async def revoke_access_token(self, info: Info, id: strawberry.ID) -> AccessToken:
        user = info.context.require_principal().user
        key = decode_id_of("AccessToken", id)
        async with info.context.db() as db:
            credential = await access_tokens.revoke_access_token(db, user.id, key)
            await db.commit()
        await info.context.signins.changed(user.id)
        return AccessToken.from_model(credential)


async def resolve_access_token(info: Info, key: uuid.UUID) -> AccessToken | None:
    """A token is visible to its owner only."""
    viewer = info.context.user
    if viewer is None:
        return None
    async with info.context.db() as db:
        credential = await db.get(Credential, key)
    if (
        credential is None
        or credential.user_id != viewer.id
        or credential.kind is not CredentialKind.PERSONAL
        or credential.revoked_at is not None
    ):
        return None
    return AccessToken.from_model(credential)
