"""The GraphQL endpoint: Strawberry's ASGI view, held to the GraphQL-over-HTTP spec.

On top of Strawberry it adds:

* content negotiation between ``application/graphql-response+json`` and
  ``application/json`` (406 when the client accepts neither);
* in ``application/graphql-response+json`` mode, status 400 for a request that
  never reached execution (syntax, validation, variables), 200 otherwise;
* 405 with ``Allow: POST`` for a mutation sent over GET, 415 for a body that is
  neither JSON nor a multipart upload;
* 413 for a JSON body over ``DEPOT_MAX_REQUEST_BYTES`` (declared or received,
  the rest never read), 408 for a body that stops arriving (``api.bodies``);
* GraphQL multipart requests (file uploads) parsed as they stream in
  (``api.multipart``), refused (400) without a CSRF-proof header;
* persisted documents (``api.persisted``): a request may name its document by
  Apollo's ``extensions.persistedQuery`` hash or a trusted ``documentId``,
  by POST or GET, instead of sending it;
* every refusal as a JSON body of GraphQL errors with ``extensions.code``,
  never a plain-text or 500 answer;
* answers from ``DEPOT_GZIP_MIN_BYTES`` on gzip-compressed for clients that
  accept it (``api.compression``).

The same view serves WebSockets, with the protocol handlers and sign-in of
``api.websocket``; the context of both is built by ``api.context``. Where
the view leans on Strawberry beyond its documented hooks,
``tests/test_strawberry_internals.py`` says so and fails when that changes.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, cast

import anyio
import strawberry
from cross_web import AsyncHTTPRequestAdapter, HTTPException, StarletteRequestAdapter
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import MissingQueryError
from strawberry.http import GraphQLHTTPResponse, GraphQLRequestData
from strawberry.http.base import BaseRequestProtocol
from strawberry.http.parse_content_type import parse_content_type
from strawberry.http.types import HTTPMethod
from strawberry.schema import BaseSchema
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError
from strawberry.types import ExecutionResult
from strawberry.types.graphql import OperationType
from strawberry.types.unset import UnsetType

from api.bodies import BodyRefused, read_body
from api.compression import gzipped
from api.context import build_context, end_request
from api.graphiql import GraphiQL
from api.multipart import CSRF_ADVICE, MultipartUploads, Refused, has_csrf_header
from api.persisted import PersistedDocuments, PersistedQueryError
from api.websocket import (
    CONNECTION_INIT_TIMEOUT,
    LegacyWSHandler,
    TransportWSHandler,
    sign_in_socket,
    subscription_protocols,
)
from core.settings import Settings
from schema.context import Context
from schema.errors import internal_error

GRAPHQL_RESPONSE_JSON = "application/graphql-response+json"
JSON = "application/json"
MULTIPART = "multipart/form-data"
_UPLOADS_KEY = "depot.multipart"

_HTTP_ERROR_CODES = {
    400: "BAD_REQUEST",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    406: "NOT_ACCEPTABLE",
    408: "REQUEST_TIMEOUT",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
}


# What each method may run, as Strawberry's view works it out for every request
# (its allow_queries_via_get left on: GET runs queries).
_ALLOWED: Final = {method: frozenset(OperationType.from_http(method)) for method in ("GET", "POST")}


@functools.lru_cache(maxsize=256)
def _media_type(content_type: str) -> str:
    """The media type of a ``Content-Type`` value, its parameters dropped.

    Strawberry's parser (the standard library's e-mail header parser) costs
    some 20 µs a call; clients send a handful of distinct values, so each is
    parsed once (a bounded cache: a client inventing values only misses it).
    """
    content_type, _ = parse_content_type(content_type)
    return content_type


def _is_multipart(request: Request) -> bool:
    return (
        request.method == "POST"
        and _media_type(request.headers.get("content-type", "")).lower() == MULTIPART
    )


def _names_document(params: Mapping[str, object]) -> bool:
    """Whether GET parameters name a document (by query, persisted hash or id): not GraphiQL."""
    return any(params.get(key) is not None for key in ("query", "extensions", "documentId"))


@dataclass
class DocumentRequest(GraphQLRequestData):
    """Strawberry's request data with the ``documentId`` it does not read (``api.persisted``)."""

    document_id: object = None


@functools.lru_cache(maxsize=256)
def negotiate(accept: str | None) -> str | None:
    """The response media type for an ``Accept`` header, or None if none fits.

    A missing header, ``*/*`` and ``application/*`` get ``application/json``,
    which every client before the spec understood. Cached like :func:`_media_type`:
    a client sends the same header with every request.
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


class RequestAdapter(StarletteRequestAdapter):
    """Strawberry's view of a Starlette request, with the request itself in reach.

    Installed as the view's ``request_adapter_class`` (Strawberry's documented
    hook), so ``parse_multipart`` finds the streaming parser that
    ``_run_multipart`` put in the request's scope.
    """

    def __init__(self, request: Request) -> None:
        super().__init__(request)
        self.request = request


class GraphQLView(GraphQL[Context, None]):
    """Strawberry's ASGI view with Depot's context and HTTP semantics."""

    request_adapter_class = RequestAdapter
    graphql_transport_ws_handler_class = TransportWSHandler
    graphql_ws_handler_class = LegacyWSHandler

    def __init__(self, schema: BaseSchema, settings: Settings, ide: GraphiQL | None = None) -> None:
        super().__init__(
            schema,
            # Depot's own page (api.graphiql) when given; without it, a 404.
            graphql_ide="graphiql" if ide is not None else None,
            subscription_protocols=subscription_protocols(settings),
            connection_init_wait_timeout=CONNECTION_INIT_TIMEOUT,
            allowed_origins=settings.cors_origins,
            # Parsed by api.multipart as the body streams in, not by Strawberry's form reader.
            multipart_uploads_enabled=True,
        )
        self.settings = settings
        self.ide = ide
        self.persisted = PersistedDocuments(settings)

    async def render_graphql_ide(self, request: Request) -> Response:
        """Depot's self-contained GraphiQL page, not Strawberry's CDN-loading one."""
        assert self.ide is not None, "Strawberry renders the IDE only when graphql_ide is set"
        return self.ide.page(request)

    def decode_json(self, data: str | bytes) -> object:
        """JSON as Strawberry decodes it (bodies, GET parameters, WebSocket messages),
        except that nesting too deep to decode is a decode error — 400 over HTTP,
        4400 over WebSocket — instead of a RecursionError answered 500."""
        try:
            return json.loads(data)
        except RecursionError:
            raise json.JSONDecodeError("The JSON is nested too deeply.", "", 0) from None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        request = Request(scope, receive)
        media_type = negotiate(request.headers.get("accept"))
        # A browser opening /graphql accepts only HTML: that is a request for GraphiQL.
        wants_ide = request.method == "GET" and not _names_document(request.query_params)
        if media_type is None and not wants_ide:
            response = self._error_response(
                406, f"Accept {GRAPHQL_RESPONSE_JSON} or {JSON} to get a response.", JSON
            )
        else:
            media_type = request.state.media_type = media_type or JSON
            multipart = _is_multipart(request)
            if multipart and not has_csrf_header(request.headers):
                response = self._error_response(400, CSRF_ADVICE, media_type)
            elif multipart:
                response = await self._run_multipart(request, media_type)
            else:
                response = await self._read_and_respond(request, media_type)
        await gzipped(response, request, self.settings.gzip_min_bytes)(scope, receive, send)

    async def _read_and_respond(self, request: Request, media_type: str) -> Response:
        """Read a POST body within its bounds first, then answer; Strawberry finds it read."""
        if request.method == "POST":
            settings = self.settings
            try:
                silence_s, limit = settings.body_timeout_seconds, settings.max_request_bytes
                await read_body(request, silence_s=silence_s, limit=limit)
            except BodyRefused as refused:
                return self._error_response(refused.status, refused.message, media_type)
        return await self._respond(request, media_type)

    async def _run_multipart(self, request: Request, media_type: str) -> Response:
        """Run a multipart request while a background task parses its body as it arrives."""
        # In the scope itself: per request whether or not the server copies the
        # lifespan state for each request, as the ASGI spec asks.
        uploads = request.scope[_UPLOADS_KEY] = MultipartUploads(request, self.settings)
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(uploads.parse)
                response = await self._respond(request, media_type)
                # What no resolver read by now will never be read: stop receiving it.
                tasks.cancel_scope.cancel()
        finally:
            await uploads.aclose()
        if uploads.status is not None and response.status_code < 400:
            # A body that timed out or overflowed mid-file: say so in the status too.
            response.status_code = uploads.status
        return response

    async def _respond(self, request: Request, media_type: str) -> Response:
        try:
            plain = None if _UPLOADS_KEY in request.scope else await self._run_plain(request)
            return plain or await self.run(request)
        except PersistedQueryError as exc:
            return self._error_response(
                exc.status, exc.message, media_type, code=exc.code, headers=exc.headers
            )
        except HTTPException as exc:
            if isinstance(exc.__cause__, InvalidOperationTypeError):
                return self._error_response(
                    405, "Mutations must be sent with POST.", media_type, allow="POST"
                )
            allow = "GET, POST" if exc.status_code == 405 else None
            return self._error_response(exc.status_code, exc.reason, media_type, allow)
        finally:
            # Also when no operation ran (a refused body, say) after sign-in opened it.
            await end_request(request)

    def _error_response(
        self,
        status: int,
        message: str,
        media_type: str,
        allow: str | None = None,
        *,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        code = code or _HTTP_ERROR_CODES.get(status, "BAD_REQUEST")
        body = {"errors": [{"message": message, "extensions": {"code": code}}]}
        headers = {**(headers or {}), **({"Allow": allow} if allow else {})}
        return Response(
            self.encode_json(body), status_code=status, media_type=media_type, headers=headers
        )

    async def get_context(
        self, request: Request | WebSocket, response: Response | WebSocket
    ) -> Context:
        context = await build_context(request, response, self.settings)
        context.trusted_labels = self.persisted.labels
        uploads: MultipartUploads | None = request.scope.get(_UPLOADS_KEY)
        if uploads is not None and context.user is not None:
            # Files spooled for later are paid for from this user's quota.
            uploads.owner_id = context.user.id
        return context

    async def on_ws_connect(self, context: Context) -> UnsetType | dict[str, object] | None:
        """Authenticate a WebSocket from its ``connection_init`` payload (4403 if refused)."""
        await sign_in_socket(context)
        return cast(UnsetType, strawberry.UNSET)

    async def get_sub_response(self, request: Request | WebSocket) -> Response:
        response = await super().get_sub_response(request)
        response.media_type = request.state.media_type
        return response

    async def parse_http_body(
        self, request: AsyncHTTPRequestAdapter
    ) -> GraphQLRequestData | list[GraphQLRequestData]:
        if request.method == "POST":
            content_type = _media_type(request.content_type or "")
            if content_type not in (JSON, MULTIPART):
                raise HTTPException(
                    415,
                    f"Send GraphQL requests as Content-Type: {JSON} "
                    f"(or {MULTIPART} with files), not {content_type!r}.",
                )
        data = await super().parse_http_body(request)
        if isinstance(data, list) or data.query is not None:
            return data
        # Named, not sent: keep the `documentId` Strawberry does not read (api.persisted).
        fields = {f.name: getattr(data, f.name) for f in dataclasses.fields(data)}
        return DocumentRequest(**fields, document_id=await self._document_id(request))

    async def _document_id(self, request: AsyncHTTPRequestAdapter) -> object:
        """The request's ``documentId``. Asked only when there is no ``query``: the
        body decoded a second time here names its document, so it is a small one
        (bar large variables, which ``DEPOT_MAX_REQUEST_BYTES`` bounds)."""
        if request.method == "GET":
            return request.query_params.get("documentId")
        if isinstance(request, RequestAdapter) and _UPLOADS_KEY in request.request.scope:
            raw: object = await request.request.scope[_UPLOADS_KEY].operations()
        else:
            raw = self.parse_json(await request.get_body())
        return raw.get("documentId") if isinstance(raw, dict) else None

    def should_render_graphql_ide(self, request: BaseRequestProtocol) -> bool:
        """GraphiQL for a GET naming no document: a persisted hash or id alone is a query."""
        return super().should_render_graphql_ide(request) and not _names_document(
            request.query_params
        )

    async def execute_single(
        self,
        request: Request,
        request_adapter: AsyncHTTPRequestAdapter,
        sub_response: Response,
        context: Context,
        root_value: None,
        request_data: GraphQLRequestData,
    ) -> ExecutionResult:
        """Run the document the request sent or named (``api.persisted``), and store a
        newly registered persisted query once it has run."""
        return await self._execute(request, request_adapter.method, context, request_data)

    async def _execute(
        self, request: Request, method: str, context: Context, request_data: GraphQLRequestData
    ) -> ExecutionResult:
        """Strawberry's ``execute_single`` for the document the request sent or named."""
        redis = request.state.redis
        document_id = None
        if isinstance(request_data, DocumentRequest):
            document_id = request_data.document_id
        resolved = await self.persisted.resolve(
            request_data.query, request_data.extensions, document_id, redis
        )
        allowed = _ALLOWED.get(method) or OperationType.from_http(cast(HTTPMethod, method))
        try:
            result = await self.schema.execute(
                resolved.query,
                variable_values=request_data.variables,
                context_value=context,
                operation_name=request_data.operation_name,
                allowed_operation_types=allowed,
                operation_extensions=request_data.extensions,
            )
        except CannotGetOperationTypeError as e:
            raise HTTPException(400, e.as_http_error_reason()) from e
        except InvalidOperationTypeError as e:
            raise HTTPException(400, e.as_http_error_reason(method)) from e
        except MissingQueryError as e:
            raise HTTPException(400, "No GraphQL query found in the request") from e
        await self.persisted.registered(resolved, result, redis)
        return result

    async def _run_plain(self, request: Request) -> Response | None:
        """Strawberry's ``run`` for a GET naming a document or a JSON POST, without its adapter
        and body parser; None, for Strawberry's own ``run``, when the request is anything else
        (a body that is not one JSON object of the spec's fields, say, or GraphiQL's page), so
        that its refusals stay as Strawberry words them.
        """
        data: object
        if request.method == "POST":
            if _media_type(request.headers.get("content-type", "")) != JSON:
                return None
            try:
                data = self.decode_json(await request.body())
            except ValueError:  # not JSON, or not UTF-8
                return None
        elif request.method == "GET" and _names_document(request.query_params):
            try:
                data = self.parse_query_params(request.query_params)
            except HTTPException:
                return None
        else:
            return None
        if not isinstance(data, dict):
            return None
        query, variables = data.get("query"), data.get("variables")
        name, extensions = data.get("operationName"), data.get("extensions")
        if not (
            isinstance(query, str | None)
            and isinstance(variables, dict | None)
            and isinstance(name, str | None)
            and isinstance(extensions, dict | None)
        ):
            return None
        sub_response = await self.get_sub_response(request)
        context = await self.get_context(request, sub_response)
        request_data = DocumentRequest(
            query, variables, name, extensions, document_id=data.get("documentId")
        )
        result = await self._execute(request, request.method, context, request_data)
        return self.create_response(await self.process_result(request, result), sub_response)

    async def parse_multipart(self, request: AsyncHTTPRequestAdapter) -> dict[str, str]:
        """``operations`` with its files, from the parser ``_run_multipart`` started.

        Returns as soon as ``operations`` and ``map`` are in: the files are
        still arriving while the operation runs.
        """
        assert isinstance(request, RequestAdapter), "GraphQLView serves Starlette requests only"
        uploads: MultipartUploads = request.request.scope[_UPLOADS_KEY]
        try:
            operations = await uploads.operations()
        except Refused as exc:
            raise HTTPException(exc.status, exc.message) from exc
        return cast(dict[str, str], operations)

    async def process_result(
        self, request: Request, result: ExecutionResult
    ) -> GraphQLHTTPResponse:
        if result.errors:
            # Safety net: an error that escaped schema.operation (e.g. raised by an
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
