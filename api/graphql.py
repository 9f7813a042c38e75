"""The GraphQL endpoint: Strawberry's ASGI view, held to the GraphQL-over-HTTP spec.

On top of Strawberry it adds:

* content negotiation between ``application/graphql-response+json`` and
  ``application/json`` (406 when the client accepts neither);
* in ``application/graphql-response+json`` mode, status 400 for a request that
  never reached execution (syntax, validation, variables), 200 otherwise;
* 405 with ``Allow: POST`` for a mutation sent over GET, 415 for a body that is
  neither JSON nor a multipart upload;
* GraphQL multipart requests (file uploads) parsed as they stream in
  (``api.multipart``), refused (400) without a CSRF-proof header;
* every refusal as a JSON body of GraphQL errors with ``extensions.code``,
  never a plain-text or 500 answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import suppress
from datetime import timedelta
from typing import cast

import anyio
import structlog
from cross_web import AsyncHTTPRequestAdapter, HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.http import GraphQLHTTPResponse, GraphQLRequestData
from strawberry.http.async_base_view import AsyncWebSocketAdapter
from strawberry.http.parse_content_type import parse_content_type
from strawberry.schema import BaseSchema
from strawberry.schema.exceptions import InvalidOperationTypeError
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL, GRAPHQL_WS_PROTOCOL
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
)
from strawberry.subscriptions.protocols.graphql_transport_ws.types import ConnectionInitMessage
from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler
from strawberry.subscriptions.protocols.graphql_ws.types import (
    ConnectionInitMessage as LegacyConnectionInitMessage,
)
from strawberry.types import ExecutionResult
from strawberry.types.unset import UNSET, UnsetType

from api.multipart import CSRF_ADVICE, MultipartUploads, Refused, has_csrf_header
from core.auth import authenticate, recheck
from core.errors import Unauthenticated
from core.settings import Settings
from schema.context import Context
from schema.errors import internal_error

logger = structlog.get_logger("depot.graphql")

GRAPHQL_RESPONSE_JSON = "application/graphql-response+json"
JSON = "application/json"
MULTIPART = "multipart/form-data"
_UPLOADS_KEY = "depot.multipart"

_HTTP_ERROR_CODES = {
    400: "BAD_REQUEST",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    406: "NOT_ACCEPTABLE",
    415: "UNSUPPORTED_MEDIA_TYPE",
}


def _is_multipart(request: Request) -> bool:
    content_type, _ = parse_content_type(request.headers.get("content-type", ""))
    return request.method == "POST" and content_type.lower() == MULTIPART


def _starlette_request(request: AsyncHTTPRequestAdapter) -> Request:
    """The Starlette request behind Strawberry's adapter."""
    inner = getattr(request, "_request", None)
    assert isinstance(inner, Request), "GraphQLView serves Starlette requests only"
    return inner


def negotiate(accept: str | None) -> str | None:
    """The response media type for an ``Accept`` header, or None if none fits.

    A missing header, ``*/*`` and ``application/*`` get ``application/json``,
    which every client before the spec understood.
    """
    if not accept:
        return JSON
    best: str | None = None
    best_q = 0.0
    for entry in accept.split(","):
        media, params = parse_content_type(entry.strip() or "*/*")
        try:
            q = float(params.get("q", "1"))
        except ValueError:
            continue
        offered = {
            GRAPHQL_RESPONSE_JSON: GRAPHQL_RESPONSE_JSON,
            JSON: JSON,
            "application/*": JSON,
            "*/*": JSON,
        }.get(media.lower())
        # At equal weight, the spec's own media type wins.
        if offered and (q > best_q or (q == best_q and offered == GRAPHQL_RESPONSE_JSON)):
            best, best_q = offered, q
    return best


async def _authenticate(context: Context, authorization: str) -> None:
    """Resolve the caller; a refused credential is kept to explain later errors."""
    async with context.sessionmaker() as db:
        try:
            context.principal = await authenticate(db, context.settings, authorization)
        except Unauthenticated as exc:
            context.auth_error = exc


# A WebSocket close reason may have at most 123 bytes.
_MAX_CLOSE_REASON = 123


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


class _TransportWSHandler(_Watched, BaseGraphQLTransportWSHandler[Context, None]):
    """graphql-transport-ws with Depot's close codes for sign-in.

    No ``authorization`` in ``connection_init`` closes with 4401 Unauthorized;
    a refused one with 4403 Forbidden (Strawberry's rejection code), as does a
    credential that ends while the socket is open.
    """

    async def handle_connection_init(self, message: ConnectionInitMessage) -> None:
        payload = message.get("payload")
        if (
            not self.connection_init_received
            and isinstance(payload, dict | None)
            and not (payload or {}).get("authorization")
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


class _LegacyWSHandler(_Watched, BaseGraphQLWSHandler[Context, None]):
    """The legacy graphql-ws protocol, with the same credential watch."""

    async def handle_connection_init(self, message: LegacyConnectionInitMessage) -> None:
        await super().handle_connection_init(message)
        self.start_watching()

    async def cleanup(self) -> None:
        await self.stop_watching()
        await super().cleanup()


class GraphQLView(GraphQL[Context, None]):
    """Strawberry's ASGI view with Depot's context and HTTP semantics."""

    graphql_transport_ws_handler_class = _TransportWSHandler
    graphql_ws_handler_class = _LegacyWSHandler

    def __init__(self, schema: BaseSchema, settings: Settings) -> None:
        protocols = [GRAPHQL_TRANSPORT_WS_PROTOCOL]
        if settings.graphql_ws_legacy:
            protocols.append(GRAPHQL_WS_PROTOCOL)
        super().__init__(
            schema,
            graphql_ide="graphiql" if settings.graphiql else None,
            subscription_protocols=protocols,
            connection_init_wait_timeout=timedelta(seconds=10),
            allowed_origins=settings.cors_origins,
            # Parsed by api.multipart as the body streams in, not by Strawberry's form reader.
            multipart_uploads_enabled=True,
        )
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        request = Request(scope, receive)
        media_type = negotiate(request.headers.get("accept"))
        # A browser opening /graphql accepts only HTML: that is a request for GraphiQL.
        wants_ide = request.method == "GET" and "query" not in request.query_params
        if media_type is None and not wants_ide:
            response = self._error_response(
                406, f"Accept {GRAPHQL_RESPONSE_JSON} or {JSON} to get a response.", JSON
            )
        else:
            media_type = request.state.media_type = media_type or JSON
            if _is_multipart(request) and not has_csrf_header(request.headers):
                response = self._error_response(400, CSRF_ADVICE, media_type)
            elif _is_multipart(request):
                response = await self._run_multipart(request, media_type)
            else:
                response = await self._respond(request, media_type)
        await response(scope, receive, send)

    async def _run_multipart(self, request: Request, media_type: str) -> Response:
        """Run a multipart request while a background task parses its body as it arrives."""
        # In the scope itself: per request whether or not the server copies the
        # lifespan state for each request, as the ASGI spec asks.
        uploads = request.scope[_UPLOADS_KEY] = MultipartUploads(request)
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(uploads.parse)
                response = await self._respond(request, media_type)
                # What no resolver read by now will never be read: stop receiving it.
                tasks.cancel_scope.cancel()
        finally:
            uploads.close()
        return response

    async def _respond(self, request: Request, media_type: str) -> Response:
        try:
            return await self.run(request)
        except HTTPException as exc:
            if isinstance(exc.__cause__, InvalidOperationTypeError):
                return self._error_response(
                    405, "Mutations must be sent with POST.", media_type, allow="POST"
                )
            allow = "GET, POST" if exc.status_code == 405 else None
            return self._error_response(exc.status_code, exc.reason, media_type, allow)

    def _error_response(
        self, status: int, message: str, media_type: str, allow: str | None = None
    ) -> Response:
        code = _HTTP_ERROR_CODES.get(status, "BAD_REQUEST")
        body = {"errors": [{"message": message, "extensions": {"code": code}}]}
        headers = {"Allow": allow} if allow else None
        return Response(
            self.encode_json(body), status_code=status, media_type=media_type, headers=headers
        )

    async def get_context(
        self, request: Request | WebSocket, response: Response | WebSocket
    ) -> Context:
        context = Context(
            request=request,
            response=response,
            settings=self.settings,
            sessionmaker=request.state.sessionmaker,
            login_limiter=request.state.login_limiter,
            storage=request.state.storage,
            events=request.state.events,
            jobs=request.state.jobs,
            request_id=request.state.request_id,
        )
        # A WebSocket authenticates in connection_init (on_ws_connect), not here.
        authorization = request.headers.get("authorization")
        if isinstance(request, Request) and authorization:
            await _authenticate(context, authorization)
        return context

    async def on_ws_connect(self, context: Context) -> UnsetType | dict[str, object] | None:
        """Authenticate a WebSocket from its ``connection_init`` payload (4403 if refused)."""
        authorization = (context.connection_params or {}).get("authorization")
        if not isinstance(authorization, str):
            raise ConnectionRejectionError()
        await _authenticate(context, authorization)
        if context.principal is None:
            raise ConnectionRejectionError()
        return cast(UnsetType, UNSET)

    async def get_sub_response(self, request: Request | WebSocket) -> Response:
        response = await super().get_sub_response(request)
        response.media_type = request.state.media_type
        return response

    async def parse_http_body(
        self, request: AsyncHTTPRequestAdapter
    ) -> GraphQLRequestData | list[GraphQLRequestData]:
        if request.method == "POST":
            content_type, _ = parse_content_type(request.content_type or "")
            if content_type not in (JSON, MULTIPART):
                raise HTTPException(
                    415,
                    f"Send GraphQL requests as Content-Type: {JSON} "
                    f"(or {MULTIPART} with files), not {content_type!r}.",
                )
        return await super().parse_http_body(request)

    async def parse_multipart(self, request: AsyncHTTPRequestAdapter) -> dict[str, str]:
        """``operations`` with its files, from the parser ``_run_multipart`` started.

        Returns as soon as ``operations`` and ``map`` are in: the files are
        still arriving while the operation runs.
        """
        uploads: MultipartUploads = _starlette_request(request).scope[_UPLOADS_KEY]
        try:
            operations = await uploads.operations()
        except Refused as exc:
            raise HTTPException(400, exc.message) from exc
        return cast(dict[str, str], operations)

    async def process_result(
        self, request: Request, result: ExecutionResult
    ) -> GraphQLHTTPResponse:
        if result.errors:
            # Safety net: an error that escaped ErrorCodes (e.g. raised by an
            # extension hook) is masked here rather than shown as it is.
            result.errors = [
                e
                if (e.extensions or {}).get("code")
                else internal_error(e, request.state.request_id)
                for e in result.errors
            ]
        response = await super().process_result(request, result)
        # A request that failed before execution has no `data` entry at all.
        if result.data is None and result.errors and all(e.path is None for e in result.errors):
            response.pop("data", None)
        return response

    def create_response(
        self,
        response_data: GraphQLHTTPResponse | list[GraphQLHTTPResponse],
        sub_response: Response,
    ) -> Response:
        response = super().create_response(response_data, sub_response)
        media_type = sub_response.media_type or JSON
        response.headers["content-type"] = media_type
        if (
            media_type == GRAPHQL_RESPONSE_JSON
            and isinstance(response_data, dict)
            and "data" not in response_data
        ):
            response.status_code = 400
        return response
