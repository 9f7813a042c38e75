"""The root ``Query`` type."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import strawberry

from schema.access_tokens import resolve_access_token
from schema.context import Info
from schema.files import resolve_file
from schema.ids import decode_id
from schema.jobs import resolve_job
from schema.node import Node
from schema.users import User, resolve_user

# How each Node type is fetched by key; each function applies its own visibility rules.
NODE_RESOLVERS: dict[str, Callable[[Info, uuid.UUID], Awaitable[Node | None]]] = {
    "AccessToken": resolve_access_token,
    "File": resolve_file,
    "Job": resolve_job,
    "User": resolve_user,
}


@strawberry.type
class Query:
    @strawberry.field(description="Any object by its global id; null when it is not visible.")
    async def node(self, info: Info, id: strawberry.ID) -> Node | None:
        type_name, key = decode_id(id)
        resolve = NODE_RESOLVERS.get(type_name)
        return await resolve(info, key) if resolve is not None else None

    @strawberry.field(
        description="The signed-in user; null when signed out, an error when the "
        "credentials sent were refused (e.g. an expired access token)."
    )
    def me(self, info: Info) -> User | None:
        if info.context.auth_error is not None:
            raise info.context.auth_error
        user = info.context.user
        return User.from_model(user) if user is not None else None
