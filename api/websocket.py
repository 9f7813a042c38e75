"""GraphQL over WebSocket: sign-in from ``connection_init``, and the credential watch.

Strawberry's protocol handlers do the protocol; Depot adds, for both
``graphql-transport-ws`` and the legacy ``graphql-ws``:

* sign-in from the ``Authorization`` in ``connection_init`` (the view's
  ``on_ws_connect`` calls :func:`sign_in_socket`; see :func:`connection_authorization`
  for the payload shapes): none closes with 4401, a refused one with 4403;
* once acknowledged, a watch that rechecks the credential and closes the
  socket with 4403 when it ends (a revoked session, a deactivated user).

The legacy protocol is served only with ``DEPOT_GRAPHQL_WS_LEGACY``
(:func:`subscription_protocols`): it has had auth-bypass bugs elsewhere.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import suppress
from datetime import timedelta

import structlog
from strawberry.exceptions import ConnectionRejectionError
from strawberry.http.async_base_view import AsyncWebSocketAdapter
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL, GRAPHQL_WS_PROTOCOL
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
)
from strawberry.subscriptions.protocols.graphql_transport_ws.types import ConnectionInitMessage
from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler
from strawberry.subscriptions.protocols.graphql_ws.types import (
    ConnectionInitMessage as LegacyConnectionInitMessage,
)

from api.context import sign_in
from core.auth import recheck
from core.errors import Unauthenticated
from core.settings import Settings
from schema.context import Context

logger = structlog.get_logger("depot.graphql")

# How long a socket may stay open without sending `connection_init` (then 4408).
CONNECTION_INIT_TIMEOUT = timedelta(seconds=10)
# A WebSocket close reason may have at most 123 bytes.
_MAX_CLOSE_REASON = 123


def subscription_protocols(settings: Settings) -> list[str]:
    """The subprotocols the view offers: the legacy one only when configured."""
    protocols = [GRAPHQL_TRANSPORT_WS_PROTOCOL]
    if settings.graphql_ws_legacy:
        protocols.append(GRAPHQL_WS_PROTOCOL)
    return protocols


def connection_authorization(payload: object) -> object:
    """The ``Authorization`` a ``connection_init`` payload carries (None if none).

    Clients put it in one of two shapes, and header names are case-insensitive,
    so any case is accepted in both: ``{"Authorization": "Bearer …"}`` (what
    GraphiQL sends from its headers pane; graphql-ws's ``connectionParams``)
    and ``{"headers": {"Authorization": "Bearer …"}}`` (clients that mirror
    their HTTP headers). The value is returned as sent: one that is not a
    string is a refused credential (4403), not a missing one (4401).
    """
    if not isinstance(payload, dict):
        return None
    found = _header(payload)
    headers = payload.get("headers")
    if found is None and isinstance(headers, dict):
        found = _header(headers)
    return found


def _header(mapping: dict[object, object]) -> object:
    for key, value in mapping.items():
        if isinstance(key, str) and key.lower() == "authorization":
            return value
    return None


async def sign_in_socket(context: Context) -> None:
    """Sign a socket in from its ``connection_init`` payload; refuse it (4403) otherwise."""
    authorization = connection_authorization(context.connection_params)
    if not isinstance(authorization, str):
        raise ConnectionRejectionError()
    await sign_in(context, authorization)
    if context.principal is None:
        raise ConnectionRejectionError()


async def watch_credential(
    context: Context, close: Callable[[int, str], Awaitable[None]], interval_s: float
) -> None:
    """Close a signed-in socket with 4403 once its credential ends, ending its operations.

    Rechecks every ``interval_s`` seconds on any replica, whoever revoked the
    credential. A database that cannot be reached keeps the socket open: a
    failed recheck is not a refusal.
    """
    principal = context.principal
    assert principal is not None, "only a signed-in socket is watched"
    while True:
        await asyncio.sleep(interval_s)
        try:
            async with context.sessionmaker() as db:
                await recheck(db, principal)
        except Unauthenticated as exc:
            reason = f"Forbidden: {exc}".encode()[:_MAX_CLOSE_REASON]
            await close(4403, reason.decode(errors="ignore"))
            return
        except Exception:
            logger.warning("websocket credential recheck failed", exc_info=True)


class _Watched:
    """Starts ``watch_credential`` once a socket is acknowledged; stops it on shutdown."""

    context: Context
    websocket: AsyncWebSocketAdapter
    _watch: asyncio.Task[None] | None = None

    def start_watching(self) -> None:
        if self.context.principal is None or self._watch is not None:
            return
        interval = self.context.settings.ws_auth_recheck_seconds
        self._watch = asyncio.create_task(
            watch_credential(self.context, self.websocket.close, interval)
        )

    async def stop_watching(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with suppress(asyncio.CancelledError):
                await self._watch


class TransportWSHandler(_Watched, BaseGraphQLTransportWSHandler[Context, None]):
    """graphql-transport-ws with Depot's close codes for sign-in.

    No ``Authorization`` in ``connection_init`` closes with 4401 Unauthorized;
    a refused one with 4403 Forbidden (Strawberry's rejection code), as does a
    credential that ends while the socket is open.
    """

    async def handle_connection_init(self, message: ConnectionInitMessage) -> None:
        payload = message.get("payload")
        if (
            not self.connection_init_received
            and isinstance(payload, dict | None)
            and not connection_authorization(payload)
        ):
            await self.websocket.close(
                code=4401, reason='Unauthorized: send {"authorization": "Bearer <token>"}'
            )
            return
        await super().handle_connection_init(message)
        if self.connection_acknowledged:
            self.start_watching()

    async def shutdown(self) -> None:
        await self.stop_watching()
        await super().shutdown()


class LegacyWSHandler(_Watched, BaseGraphQLWSHandler[Context, None]):
    """The legacy graphql-ws protocol, with the same credential watch."""

    async def handle_connection_init(self, message: LegacyConnectionInitMessage) -> None:
        await super().handle_connection_init(message)
        self.start_watching()

    async def cleanup(self) -> None:
        await self.stop_watching()
        await super().cleanup()
