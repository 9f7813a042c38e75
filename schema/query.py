"""The root ``Query`` type: ``node(id:)`` and ``me``."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import strawberry

from core.errors import NotFound
from schema.access_tokens import resolve_access_token
from schema.context import Info
from schema.ids import decode_id
from schema.node import Node
from schema.nodes import File, Job, User
from schema.permissions import owned
from schema.pipelines import resolve_template
from schema.resumable_uploads import resolve_resumable_upload
from schema.webhooks import resolve_delivery, resolve_webhook


async def _file(info: Info, key: uuid.UUID) -> File:
    return File.from_model(await owned(info.context.loaders.files, info.context.user, key))


async def _job(info: Info, key: uuid.UUID) -> Job:
    return Job.from_model(await owned(info.context.loaders.jobs, info.context.user, key))


async def _user(info: Info, key: uuid.UUID) -> User:
    return User.from_model(await owned(info.context.loaders.users, info.context.user, key))


# How each Node type is fetched by key, with its visibility rules; an object the
# viewer may not see is None or NOT_FOUND, and ``node`` answers null for both.
NODE_RESOLVERS: dict[str, Callable[[Info, uuid.UUID], Awaitable[Node | None]]] = {
    "AccessToken": resolve_access_token,
    "File": _file,
    "Job": _job,
    "PipelineTemplate": resolve_template,
    "ResumableUpload": resolve_resumable_upload,
    "User": _user,
    "Webhook": resolve_webhook,
    "WebhookDelivery": resolve_delivery,
}


@strawberry.type
class Query:
    @strawberry.field(description="Any object by its global id; null when it is not visible.")
    async def node(self, info: Info, id: strawberry.ID) -> Node | None:
        type_name, key = decode_id(id)
        resolve = NODE_RESOLVERS.get(type_name)
        if resolve is None:
            return None
        try:
            return await resolve(info, key)
        except NotFound:
            return None

    @strawberry.field(
        description="The signed-in user; null when signed out, an error when the "
        "credentials sent were refused (e.g. an expired access token)."
    )
    def me(self, info: Info) -> User | None:
        if info.context.auth_error is not None:
            raise info.context.auth_error
        user = info.context.user
        return User.from_model(user) if user is not None else None
