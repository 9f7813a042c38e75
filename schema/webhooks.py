"""Webhooks: created, listed, changed and deleted by their owner, with their deliveries.

The signing secret is shown when a webhook is created and when it is
rotated, never in a listing. What is sent, and when, is :mod:`core.webhooks`.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Self

import strawberry
from sqlmodel import col
from strawberry.dataloader import DataLoader

from core import webhooks
from core.models import Webhook as WebhookRow
from core.models import WebhookDelivery as DeliveryRow
from schema.context import Info
from schema.enums import WebhookDeliveryStatus, WebhookEventType
from schema.ids import decode_id_of, encode_id
from schema.loaders import Loaders
from schema.node import Node
from schema.pagination import Connection, Ordering, paginate, paginate_children
from schema.permissions import IsAuthenticated

NEWEST_FIRST = Ordering(descending=True)


@strawberry.type(description="One attempt to deliver one event to a webhook.")
class WebhookDelivery(Node):
    message_id: str = strawberry.field(
        description="The `webhook-id` header: the same for every attempt of one event."
    )
    event_type: WebhookEventType
    attempt: int = strawberry.field(description="1 for the first attempt, then each retry.")
    status: WebhookDeliveryStatus
    payload: str = strawberry.field(description="The JSON body sent.")
    created_at: datetime
    due_at: datetime = strawberry.field(description="When the attempt was (or is) due.")
    attempted_at: datetime | None
    status_code: int | None = strawberry.field(description="The receiver's HTTP status.")
    duration_ms: int | None
    response_excerpt: str | None = strawberry.field(
        description="The start of the receiver's answer (1 KiB at most)."
    )
    error: str | None = strawberry.field(description="Why there was no answer, if there was not.")
    next_retry_at: datetime | None = strawberry.field(
        description="When the next attempt is due; null when none follows."
    )

    @classmethod
    def from_model(cls, row: DeliveryRow) -> Self:
        return cls(
            id=strawberry.ID(encode_id("WebhookDelivery", row.id)),
            key=row.id,
            message_id=row.message_id,
            event_type=row.event_type,
            attempt=row.attempt,
            status=row.status,
            payload=row.payload,
            created_at=row.created_at,
            due_at=row.due_at,
            attempted_at=row.attempted_at,
            status_code=row.status_code,
            duration_ms=row.duration_ms,
            response_excerpt=row.response_excerpt,
            error=row.error,
            next_retry_at=row.next_retry_at,
        )


@strawberry.type(description="A URL Depot tells of your events, signed as Standard Webhooks.")
class Webhook(Node):
    url: str
    events: list[WebhookEventType]
    enabled: bool = strawberry.field(
        description="False once disabled, by you or after failing for too long."
    )
    disabled_at: datetime | None
    failing_since: datetime | None = strawberry.field(
        description="The first failed attempt since the last success."
    )
    created_at: datetime

    @classmethod
    def from_model(cls, row: WebhookRow) -> Self:
        return cls(
            id=strawberry.ID(encode_id("Webhook", row.id)),
            key=row.id,
            url=row.url,
            events=[WebhookEventType(e) for e in row.events],
            enabled=row.enabled,
            disabled_at=row.disabled_at,
            failing_since=row.failing_since,
            created_at=row.created_at,
        )

    @strawberry.field(description="Every attempt, newest first.")
    async def deliveries(
        self, info: Info, first: int | None = None, after: str | None = None
    ) -> Connection[WebhookDelivery]:
        loader = info.context.loaders.paged("webhook_deliveries", first, after, _deliveries)
        page: Connection[WebhookDelivery] = await loader.load(self.key)
        return page


def _deliveries(
    loaders: Loaders, first: int | None, after: str | None
) -> DataLoader[uuid.UUID, Connection[WebhookDelivery]]:
    async def load(webhook_ids: list[uuid.UUID]) -> list[Connection[WebhookDelivery]]:
        async with loaders.shared() as db:
            pages = await paginate_children(
                db,
                DeliveryRow,
                col(DeliveryRow.webhook_id),
                webhook_ids,
                first=first,
                after=after,
                to_node=WebhookDelivery.from_model,
                ordering=NEWEST_FIRST,
            )
        return [pages[webhook_id] for webhook_id in webhook_ids]

    return DataLoader(load_fn=load)


@strawberry.type
class WebhookWithSecret:
    secret: str = strawberry.field(
        description="The signing secret (`whsec_…`): shown now and never again."
    )
    webhook: Webhook


@strawberry.input
class CreateWebhookInput:
    url: str = strawberry.field(description="https in production; a public address.")
    events: list[WebhookEventType]


@strawberry.input(description="What to change; what is left out stays.")
class UpdateWebhookInput:
    url: str | None = None
    events: list[WebhookEventType] | None = None
    enabled: bool | None = strawberry.field(
        default=None, description="True enables a disabled webhook and forgets its failures."
    )


@strawberry.type
class WebhookQuery:
    @strawberry.field(
        description="Your webhooks, oldest first.", permission_classes=[IsAuthenticated]
    )
    async def webhooks(
        self, info: Info, first: int | None = None, after: str | None = None
    ) -> Connection[Webhook]:
        user = info.context.require_principal().user
        async with info.context.db() as db:
            return await paginate(
                db,
                WebhookRow,
                [col(WebhookRow.owner_id) == user.id],
                first=first,
                after=after,
                to_node=Webhook.from_model,
            )


@strawberry.type
class WebhookMutation:
    @strawberry.mutation(
        description="Tell `url` of `events`. `BAD_USER_INPUT` (field `url`) for a URL that "
        "is not https in production or leads to a private address.",
        permission_classes=[IsAuthenticated],
    )
    async def create_webhook(self, info: Info, input: CreateWebhookInput) -> WebhookWithSecret:
        user = info.context.require_principal().user
        async with info.context.db() as db:
            row = await webhooks.create_webhook(
                db, info.context.settings, user.id, input.url, input.events
            )
        return WebhookWithSecret(secret=row.secret, webhook=Webhook.from_model(row))

    @strawberry.mutation(description="Change a webhook.", permission_classes=[IsAuthenticated])
    async def update_webhook(
        self, info: Info, id: strawberry.ID, input: UpdateWebhookInput
    ) -> Webhook:
        user = info.context.require_principal().user
        key = decode_id_of("Webhook", id)
        async with info.context.db() as db:
            row = await webhooks.update_webhook(
                db,
                info.context.settings,
                user.id,
                key,
                url=input.url,
                events=input.events if input.events is not None else None,
                enabled=input.enabled,
            )
        return Webhook.from_model(row)

    @strawberry.mutation(
        description="Delete a webhook and its deliveries; pending ones are not sent.",
        permission_classes=[IsAuthenticated],
    )
    async def delete_webhook(self, info: Info, id: strawberry.ID) -> Webhook:
        user = info.context.require_principal().user
        async with info.context.db() as db:
            row = await webhooks.delete_webhook(db, user.id, decode_id_of("Webhook", id))
        return Webhook.from_model(row)

    @strawberry.mutation(
        description="Give a webhook a new signing secret, shown once; the old one stops at once.",
        permission_classes=[IsAuthenticated],
    )
    async def rotate_webhook_secret(self, info: Info, id: strawberry.ID) -> WebhookWithSecret:
        user = info.context.require_principal().user
        async with info.context.db() as db:
            row = await webhooks.rotate_secret(db, user.id, decode_id_of("Webhook", id))
        return WebhookWithSecret(secret=row.secret, webhook=Webhook.from_model(row))

    @strawberry.mutation(
        description="Send a delivery's event again, with the same `webhook-id`, as a new "
        "attempt 1 (retried as any delivery).",
        permission_classes=[IsAuthenticated],
    )
    async def redeliver_webhook(self, info: Info, delivery_id: strawberry.ID) -> WebhookDelivery:
        user = info.context.require_principal().user
        key = decode_id_of("WebhookDelivery", delivery_id, field="deliveryId")
        async with info.context.db() as db:
            row = await webhooks.redeliver(db, user.id, key)
        return WebhookDelivery.from_model(row)


async def resolve_webhook(info: Info, key: uuid.UUID) -> Webhook | None:
    """A webhook is visible to its owner only."""
    viewer = info.context.user
    if viewer is None:
        return None
    async with info.context.db() as db:
        row = await db.get(WebhookRow, key)
    return Webhook.from_model(row) if row is not None and row.owner_id == viewer.id else None


async def resolve_delivery(info: Info, key: uuid.UUID) -> WebhookDelivery | None:
    """A delivery is visible to its webhook's owner only."""
    viewer = info.context.user
    if viewer is None:
        return None
    async with info.context.db() as db:
        row = await db.get(DeliveryRow, key)
        webhook = await db.get(WebhookRow, row.webhook_id) if row is not None else None
    if row is None or webhook is None or webhook.owner_id != viewer.id:
        return None
    return WebhookDelivery.from_model(row)
