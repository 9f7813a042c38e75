"""GraphQL over WebSocket: sign-in from ``connection_init``, and the credential watch.

Strawberry's protocol handlers do the protocol; Depot adds, for both
``graphql-transport-ws`` and the legacy ``graphql-ws``:

* sign-in from the ``Authorization`` in ``connection_init`` (the view's
  ``on_ws_connect`` calls :func:`sign_in_socket`; see :func:`connection_authorization`
  for the payload shapes): none closes with 4401, a refused one with 4403;
* caps on open sockets per client address and per user, on this replica
  (:class:`OpenSockets`): one too many is closed with 4429, the code
  graphql-transport-ws gives "too many" (it mirrors HTTP's 429);
* once acknowledged, a watch that closes the socket with 4403 when its
  credential ends (a revoked session or token, a deactivated user). A
  revocation is announced on the event bus (``core.events.CredentialsRevoked``)
  and every socket of that user rechecks at once; a rare poll
  (``DEPOT_WS_AUTH_RECHECK_SECONDS``) covers an event lost in transit, and
  the watch also wakes when the access token expires. The watch is the
  process's one per user (``core.signins.SignIns.watching``), not one per
  socket: a socket adds an entry to it, no task and no subscription;
* persisted documents (``api.persisted``), as over HTTP: a ``subscribe``
  (``start``) payload may name its document by ``extensions.persistedQuery``
  or ``documentId`` instead of sending it, and with
  ``DEPOT_TRUSTED_DOCUMENTS_ONLY`` only the manifest's documents start. A
  refusal is that operation's ``error`` message; the socket stays open.
  Registration is HTTP's: graphql-ws clients always send the query whole.

The legacy protocol is served only with ``DEPOT_GRAPHQL_WS_LEGACY``
(:func:`subscription_protocols`): it has had auth-bypass bugs elsewhere.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable
from datetime import timedelta

import structlog
from redis.asyncio import Redis
from strawberry.exceptions import ConnectionRejectionError
from strawberry.http.async_base_view import AsyncWebSocketAdapter
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL, GRAPHQL_WS_PROTOCOL
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
)
from strawberry.subscriptions.protocols.graphql_transport_ws.types import (
    ConnectionInitMessage,
    SubscribeMessage,
)
from strawberry.subscriptions.protocols.graphql_transport_ws.types import (
    ErrorMessage as TransportErrorMessage,
)
from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler
from strawberry.subscriptions.protocols.graphql_ws.types import (
    ConnectionInitMessage as LegacyConnectionInitMessage,
)
from strawberry.subscriptions.protocols.graphql_ws.types import ErrorMessage, StartMessage

from api.context import SocketContext, sign_in
from api.persisted import PersistedDocuments, PersistedQueryError
from core.settings import Settings
from core.signins import SocketWatch
from schema.context import Context

logger = structlog.get_logger("depot.graphql")

# How long a socket may stay open without sending `connection_init` (then 4408).
CONNECTION_INIT_TIMEOUT = timedelta(seconds=10)
# graphql-transport-ws's "too many" (its codes mirror HTTP statuses: 429).
TOO_MANY = 4429


class TooManySockets(Exception):
    """Raised during sign-in when the user already holds as many sockets as allowed."""


class OpenSockets:
    """This replica's open WebSockets, counted per client address and per user.

    Counts live in the process: a cap guards the replica that holds the
    sockets, and a crashed replica leaves no count behind (a count kept in
    Redis would). Taking and releasing a place is a dict update.
    """

    def __init__(self, *, per_user: int, per_address: int) -> None:
        self._limits = {"user": per_user, "address": per_address}
        self._open: Counter[tuple[str, str]] = Counter()
        # The user each signed-in socket (by its context's id) holds a place for.
        self._users: dict[int, str] = {}

    def _take(self, kind: str, key: str) -> bool:
        if self._open[kind, key] >= self._limits[kind]:
            return False
        self._open[kind, key] += 1
        return True

    def _release(self, kind: str, key: str) -> None:
        self._open[kind, key] -= 1
        if self._open[kind, key] <= 0:
            del self._open[kind, key]

    def enter(self, address: str) -> bool:
        """Take a place for a socket from ``address``; False when it holds all it may."""
        return self._take("address", address)

    def leave(self, address: str, socket: object) -> None:
        """Give back the places a socket held (its address's, and its user's if signed in)."""
        self._release("address", address)
        self.sign_out(socket)

    def sign_in(self, socket: object, user: str) -> bool:
        """Take a place for ``user`` on ``socket``; False when the user holds all they may."""
        self.sign_out(socket)  # the legacy protocol may sign a socket in again
        if not self._take("user", user):
            return False
        self._users[id(socket)] = user
        return True

    def sign_out(self, socket: object) -> None:
        user = self._users.pop(id(socket), None)
        if user is not None:
            self._release("user", user)


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


def _sockets(context: Context) -> OpenSockets:
    sockets: OpenSockets = context.request.state.sockets
    return sockets


async def sign_in_socket(context: Context) -> None:
    """Sign a socket in from its ``connection_init`` payload; refuse it (4403) otherwise.

    A user who already holds ``DEPOT_WS_CONNECTIONS_PER_USER`` sockets here
    gets :class:`TooManySockets` (4429) instead; the place taken is released
    by the handler when the socket ends (or by a later sign-in on the legacy
    protocol, which allows several).
    """
    _sockets(context).sign_out(context)
    context.principal = None
    authorization = connection_authorization(context.connection_params)
    # Read once: the socket need not hold the decoded payload (its token) while it is open.
    context.connection_params = None
    if not isinstance(authorization, str):
        raise ConnectionRejectionError()
    await sign_in(context, authorization)
    held = context.held if isinstance(context, SocketContext) else None
    if held is None:
        raise ConnectionRejectionError()
    if not _sockets(context).sign_in(context, str(held.user_id)):
        context.principal = None
        raise TooManySockets("Too many open WebSockets for this user; close one first.")


async def resolve_payload(
    persisted: PersistedDocuments, payload: object, redis: Redis | None
) -> PersistedQueryError | None:
    """Put the document an operation's payload names into its ``query``; or say why it
    cannot run. A payload of the wrong shape is left to Strawberry to refuse."""
    if not isinstance(payload, dict):
        return None
    query, extensions = payload.get("query"), payload.get("extensions")
    try:
        resolved = await persisted.resolve(
            query if isinstance(query, str) else None,
            extensions if isinstance(extensions, dict) else None,
            payload.get("documentId"),
            redis,
        )
    except PersistedQueryError as exc:
        return exc
    if resolved.query is not None:
        payload["query"] = resolved.query
    return None


class _Watched:
    """Counts a socket against its caps; watches its credential once acknowledged."""

    context: Context
    websocket: AsyncWebSocketAdapter
    _watch: SocketWatch | None = None

    async def handle(self) -> None:
        sockets = _sockets(self.context)
        address = self.context.client_address
        if not sockets.enter(address):
            await self.websocket.close(
                TOO_MANY, "Too many open WebSockets from this address; close one first."
            )
            return
        try:
            await super().handle()  # type: ignore[misc]
        finally:
            sockets.leave(address, self.context)

    async def _init(self, init: Awaitable[None]) -> None:
        """Run the protocol's ``connection_init``, closing with 4429 past the user's cap."""
        try:
            await init
        except TooManySockets as exc:
            await self.websocket.close(TOO_MANY, str(exc))

    async def refusal(self, payload: object) -> PersistedQueryError | None:
        """Why the operation ``payload`` names cannot run, after filling in its document."""
        persisted = getattr(getattr(self, "view", None), "persisted", None)
        assert isinstance(persisted, PersistedDocuments), "served by api.graphql.GraphQLView"
        return await resolve_payload(persisted, payload, self.context.request.state.redis)

    def start_watching(self) -> None:
        held = self.context.held if isinstance(self.context, SocketContext) else None
        if held is None or self._watch is not None:
            return
        self._watch = self.context.signins.watching(held, self.websocket.close)

    async def stop_watching(self) -> None:
        if self._watch is not None:
            self.context.signins.unwatch(self._watch)
            self._watch = None


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
        await self._init(super().handle_connection_init(message))
        # Strawberry keeps the cancelled init timeout's task (and, through its
        # CancelledError, its frames: 1.4 KiB) for the socket's life; let it go.
        self.connection_init_timeout_task = None
        if self.connection_acknowledged:
            self.start_watching()

    async def handle_subscribe(self, message: SubscribeMessage) -> None:
        if self.connection_acknowledged:
            refusal = await self.refusal(message.get("payload"))
            if refusal is not None:
                await self.send_message(
                    TransportErrorMessage(
                        id=message["id"], type="error", payload=[refusal.formatted()]
                    )
                )
                return
        await super().handle_subscribe(message)

    async def shutdown(self) -> None:
        await self.stop_watching()
        await super().shutdown()
        await self.context.db.close()  # each operation closed it; this one may have been cut off


class LegacyWSHandler(_Watched, BaseGraphQLWSHandler[Context, None]):
    """The legacy graphql-ws protocol, with the same credential watch."""

    async def handle_connection_init(self, message: LegacyConnectionInitMessage) -> None:
        await self._init(super().handle_connection_init(message))
        self.start_watching()

    async def handle_start(self, message: StartMessage) -> None:
        if self.connection_acknowledged:
            refusal = await self.refusal(message.get("payload"))
            if refusal is not None:
                await self.send_message(
                    ErrorMessage(id=message["id"], type="error", payload=refusal.formatted())
                )
                return
        await super().handle_start(message)

    async def cleanup(self) -> None:
        await self.stop_watching()
        await super().cleanup()
        await self.context.db.close()
