"""Every place Depot leans on Strawberry beyond its documented API, pinned.

Strawberry documents a few hooks of its ASGI view (``get_context``,
``process_result``, ``encode_json``, ``on_ws_connect``, …) and of schema
extensions. Depot also overrides undocumented view methods, subclasses the
WebSocket protocol handlers, reads attributes they set, imports from modules
Strawberry does not advertise and relies on ``cross_web``, the package
Strawberry's views are built on. Each of those is checked here, so that a
Strawberry upgrade that moves one fails with a message naming what broke and
where Depot uses it, instead of as a puzzling failure far away.

Documented hooks appear where an override's signature must still match.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import anyio
import cross_web
import graphql
import pytest
import strawberry
from graphql import (
    GraphQLError,
    GraphQLSchema,
    ValidationRule,
    parse,
    specified_rules,
    validate,
)
from graphql.validation.validate import ValidationAbortedError
from starlette.requests import Request
from starlette.responses import Response
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.extensions import ParserCache, SchemaExtension
from strawberry.extensions.runner import SchemaExtensionsRunner
from strawberry.file_uploads.scalars import UploadDefinition
from strawberry.http import GraphQLRequestData, async_base_view
from strawberry.http.async_base_view import AsyncBaseHTTPView, AsyncWebSocketAdapter
from strawberry.http.parse_content_type import parse_content_type
from strawberry.schema.exceptions import InvalidOperationTypeError
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
)
from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler
from strawberry.types import ExecutionContext
from strawberry.types.scalar import ScalarDefinition
from strawberry.types.unset import UnsetType

from api.graphql import GraphQLView, RequestAdapter
from api.websocket import LegacyWSHandler, TransportWSHandler
from schema import _Schema, build_schema
from schema.execution import DepotExecutor, asks_no_info
from schema.operation import DepotOperation, OperationRunner
from schema.scalars import SCALARS, BigInt

pytestmark = pytest.mark.anyio


def _parameters(function: Callable[..., Any]) -> list[str]:
    return list(inspect.signature(function).parameters)


def _assert_overrides(ours: type, theirs: type, name: str, where: str) -> None:
    """``ours.name`` overrides ``theirs.name``, which still exists with the same parameters."""
    original = getattr(theirs, name, None)
    assert original is not None, (
        f"Strawberry's {theirs.__qualname__}.{name} is gone, so {where} overrides nothing: "
        "find what replaced it in the installed Strawberry and move the override there."
    )
    assert _parameters(getattr(ours, name)) == _parameters(original), (
        f"Strawberry's {theirs.__qualname__}.{name} now takes {_parameters(original)}; "
        f"{where} still takes {_parameters(getattr(ours, name))}: update the override."
    )


# -- api/graphql.py: the view ---------------------------------------------------

# Methods GraphQLView overrides; the undocumented ones carry Depot's HTTP rules.
VIEW_OVERRIDES = {
    "__call__": "undocumented: negotiation, 406, the CSRF check and multipart streaming",
    "parse_http_body": "undocumented: 415 for a body neither JSON nor multipart; documentId",
    "execute_single": "undocumented: runs the document a persisted hash or documentId names",
    "should_render_graphql_ide": "undocumented: a GET naming a persisted document is a query",
    "parse_multipart": "undocumented: operations from api.multipart's streaming parser",
    "get_sub_response": "undocumented for ASGI: carries the negotiated media type",
    "create_response": "undocumented for ASGI: Content-Type and status 400 in spec mode",
    "decode_json": "documented; also decodes WebSocket messages (a too-deep one is 4400)",
    "get_context": "documented",
    "process_result": "documented",
    "render_graphql_ide": "documented: Depot's own page (api.graphiql), no CDN",
    "on_ws_connect": "documented",
}


@pytest.mark.parametrize("name", sorted(VIEW_OVERRIDES))
def test_view_overrides_match_strawberry(name: str) -> None:
    _assert_overrides(
        GraphQLView, GraphQL, name, f"api.graphql.GraphQLView.{name} ({VIEW_OVERRIDES[name]})"
    )


def test_view_calls_strawberry_methods_with_the_arguments_it_gives() -> None:
    # GraphQLView calls self.run(request) and self.encode_json(body).
    assert _parameters(GraphQL.run)[:2] == ["self", "request"], (
        "Strawberry's view `run` no longer takes the request first: "
        "api.graphql.GraphQLView._respond calls self.run(request)."
    )
    assert _parameters(GraphQL.encode_json) == ["self", "data"], (
        "Strawberry's view `encode_json(data)` changed: GraphQLView._error_response uses it."
    )


def test_view_constructor_takes_the_options_depot_gives() -> None:
    given = {
        "graphql_ide",
        "subscription_protocols",
        "connection_init_wait_timeout",
        "allowed_origins",
        "multipart_uploads_enabled",
    }
    missing = given - set(_parameters(GraphQL.__init__))
    assert not missing, f"strawberry.asgi.GraphQL() no longer takes {sorted(missing)}"


def test_view_class_attributes_depot_sets_still_exist() -> None:
    for name in (
        "request_adapter_class",
        "graphql_transport_ws_handler_class",
        "graphql_ws_handler_class",
    ):
        assert hasattr(GraphQL, name), (
            f"Strawberry's view no longer has `{name}`: api.graphql.GraphQLView sets it."
        )


def test_request_adapter_extends_strawberrys_own() -> None:
    # RequestAdapter (installed with the documented `request_adapter_class`)
    # only adds `.request`; anything else must stay as Strawberry's default.
    assert GraphQL.request_adapter_class is cross_web.StarletteRequestAdapter, (
        "Strawberry's ASGI view no longer adapts requests with "
        "cross_web.StarletteRequestAdapter: api.graphql.RequestAdapter extends that one."
    )
    assert _parameters(cross_web.StarletteRequestAdapter.__init__) == ["self", "request"], (
        "cross_web.StarletteRequestAdapter(request) changed: api.graphql.RequestAdapter calls it."
    )
    adapter = RequestAdapter(_request("POST", content_type="multipart/form-data; boundary=x"))
    assert isinstance(adapter, cross_web.AsyncHTTPRequestAdapter)
    assert adapter.method == "POST"
    assert adapter.content_type == "multipart/form-data; boundary=x"


def test_strawberry_raises_the_http_exception_depot_catches() -> None:
    assert async_base_view.HTTPException is cross_web.HTTPException, (
        "Strawberry's view no longer raises cross_web.HTTPException: "
        "api.graphql.GraphQLView._respond catches that one to answer refusals as JSON."
    )
    refusal = cross_web.HTTPException(400, "why")
    assert (refusal.status_code, refusal.reason) == (400, "why")


def test_content_types_are_parsed_as_strawberry_dispatches_them() -> None:
    # GraphQLView's 415 check and _is_multipart must agree with the parser
    # Strawberry's parse_http_body dispatches on.
    assert async_base_view.parse_content_type is parse_content_type, (
        "Strawberry's view no longer parses Content-Type with "
        "strawberry.http.parse_content_type: make api.graphql use what it uses now."
    )
    assert parse_content_type("application/json; charset=utf-8") == (
        "application/json",
        {"charset": "utf-8"},
    )


def test_unset_is_strawberrys_unset_type() -> None:
    # on_ws_connect returns UNSET so that connection_ack carries no payload.
    assert isinstance(strawberry.UNSET, UnsetType), (
        "strawberry.UNSET is no longer a strawberry.types.unset.UnsetType: "
        "api.graphql.GraphQLView.on_ws_connect relies on it."
    )


@strawberry.type
class _Query:
    @strawberry.field
    def hello(self) -> str:
        return "hi"


@strawberry.type
class _Mutation:
    @strawberry.mutation
    def poke(self) -> bool:
        return True


_SCHEMA = strawberry.Schema(query=_Query, mutation=_Mutation)


def _request(method: str, *, query_string: bytes = b"", content_type: str | None = None) -> Request:
    headers = [(b"content-type", content_type.encode())] if content_type else []
    scope = {
        "type": "http",
        "method": method,
        "path": "/graphql",
        "query_string": query_string,
        "headers": headers,
    }
    return Request(scope)


async def test_a_mutation_over_get_is_refused_from_invalid_operation_type() -> None:
    # GraphQLView._respond answers 405 when the refusal's cause is this error.
    view = GraphQL[None, None](_SCHEMA)
    with pytest.raises(cross_web.HTTPException) as refused:
        await view.run(_request("GET", query_string=b"query=mutation+%7B+poke+%7D"))
    assert isinstance(refused.value.__cause__, InvalidOperationTypeError), (
        "Strawberry no longer refuses a mutation over GET with an HTTPException raised from "
        "InvalidOperationTypeError: api.graphql.GraphQLView._respond maps that to 405."
    )


async def test_multipart_bodies_reach_parse_multipart_through_the_request_adapter() -> None:
    seen: list[cross_web.AsyncHTTPRequestAdapter] = []

    class View(GraphQL[None, None]):
        request_adapter_class = RequestAdapter

        async def parse_multipart(self, request: cross_web.AsyncHTTPRequestAdapter) -> Any:
            seen.append(request)
            return {"query": "{ hello }"}

    request = _request("POST", content_type="multipart/form-data; boundary=x")
    response = await View(_SCHEMA, multipart_uploads_enabled=True).run(request)
    assert response.status_code == 200
    assert len(seen) == 1
    assert isinstance(seen[0], RequestAdapter), (
        "Strawberry no longer reads a multipart body with self.parse_multipart(adapter), "
        "the adapter built by request_adapter_class: api.graphql.GraphQLView.parse_multipart "
        "is how streamed uploads reach the operation."
    )
    assert seen[0].request is request


async def test_parse_http_body_returns_request_data() -> None:
    # GraphQLView.parse_http_body refuses other content types, then defers to it.
    view = GraphQL[None, None](_SCHEMA)
    adapter = RequestAdapter(_request("GET", query_string=b"query=%7B+hello+%7D"))
    data = await view.parse_http_body(adapter)
    assert isinstance(data, GraphQLRequestData)
    assert data.query == "{ hello }"


async def test_a_get_without_query_parses_to_request_data_with_its_extensions() -> None:
    # A persisted query by GET: GraphQLView.execute_single fills in `query` from the hash.
    view = GraphQL[None, None](_SCHEMA)
    adapter = RequestAdapter(_request("GET", query_string=b"extensions=%7B%22a%22%3A1%7D"))
    data = await view.parse_http_body(adapter)
    assert isinstance(data, GraphQLRequestData)
    assert (data.query, data.extensions) == (None, {"a": 1}), (
        "Strawberry no longer parses a GET without `query` into request data with its JSON "
        "`extensions`: api.graphql.GraphQLView resolves persisted queries from there."
    )
    assert dataclasses.is_dataclass(data), (
        "GraphQLRequestData is no longer a dataclass: api.graphql.DocumentRequest extends it "
        "and GraphQLView.execute_single copies it with dataclasses.replace."
    )


async def test_every_http_operation_runs_through_execute_single() -> None:
    # GraphQLView.execute_single is where persisted documents are resolved (and
    # trusted-only enforced): no HTTP operation may run around it.
    seen: list[str | None] = []

    class View(GraphQL[None, None]):
        async def execute_single(  # type: ignore[override]
            self,
            request: Any,
            request_adapter: Any,
            sub_response: Any,
            context: Any,
            root_value: Any,
            request_data: GraphQLRequestData,
        ) -> Any:
            seen.append(request_data.query)
            return await super().execute_single(
                request,
                request_adapter,
                sub_response,
                context,
                root_value,
                dataclasses.replace(request_data, query="{ hello }"),
            )

    response = await View(_SCHEMA).run(_request("GET", query_string=b"extensions=%7B%7D"))
    assert seen == [None], (
        "Strawberry's view no longer runs an HTTP operation through execute_single: "
        "api.graphql.GraphQLView resolves persisted documents and refuses untrusted ones there."
    )
    assert response.status_code == 200
    assert response.body == b'{"data":{"hello":"hi"}}'


async def test_the_sub_response_is_a_starlette_response_copied_into_the_answer() -> None:
    # GraphQLView.get_sub_response stores the media type on it; create_response reads it.
    view = GraphQL[None, None](_SCHEMA)
    sub_response = await view.get_sub_response(_request("GET"))
    assert isinstance(sub_response, Response), (
        "Strawberry's ASGI sub-response is no longer a Starlette Response: "
        "api.graphql.GraphQLView keeps the negotiated media type on it."
    )
    sub_response.headers["x-check"] = "1"
    sub_response.status_code = 418
    response = view.create_response({"data": None}, sub_response)
    assert response.headers["x-check"] == "1"
    assert response.status_code == 418


async def test_process_result_has_a_data_entry_to_drop() -> None:
    # GraphQLView.process_result pops `data` from a request that never executed.
    processed = await GraphQL[None, None](_SCHEMA).process_result(
        _request("GET"), await _SCHEMA.execute("{ hello }")
    )
    assert processed == {"data": {"hello": "hi"}}


# -- api/websocket.py: the protocol handlers ---------------------------------------


@pytest.mark.parametrize(
    ("ours", "theirs", "name"),
    [
        (TransportWSHandler, BaseGraphQLTransportWSHandler, "handle_connection_init"),
        (TransportWSHandler, BaseGraphQLTransportWSHandler, "shutdown"),
        (TransportWSHandler, BaseGraphQLTransportWSHandler, "handle"),
        (LegacyWSHandler, BaseGraphQLWSHandler, "handle_connection_init"),
        (LegacyWSHandler, BaseGraphQLWSHandler, "handle"),
        (LegacyWSHandler, BaseGraphQLWSHandler, "cleanup"),
        (TransportWSHandler, BaseGraphQLTransportWSHandler, "handle_subscribe"),
        (LegacyWSHandler, BaseGraphQLWSHandler, "handle_start"),
    ],
)
def test_handler_overrides_match_strawberry(ours: type, theirs: type, name: str) -> None:
    _assert_overrides(ours, theirs, name, f"api.websocket.{ours.__name__}.{name}")


def test_handlers_extend_strawberrys_defaults() -> None:
    defaults = {
        "graphql_transport_ws_handler_class": BaseGraphQLTransportWSHandler,
        "graphql_ws_handler_class": BaseGraphQLWSHandler,
    }
    for attribute, handler in defaults.items():
        default = getattr(AsyncBaseHTTPView, attribute)
        assert (typing.get_origin(default) or default) is handler, (
            f"Strawberry's default {attribute} is no longer {handler.__qualname__}: "
            "api.websocket's handlers subclass that one."
        )


def test_the_socket_close_depot_calls_takes_a_code_and_a_reason() -> None:
    # core.signins.SignIns.watching is handed `websocket.close` and calls close(4403, reason).
    assert _parameters(AsyncWebSocketAdapter.close) == ["self", "code", "reason"], (
        "Strawberry's AsyncWebSocketAdapter.close(code, reason) changed: "
        "core.signins.SignIns.watching closes sockets with it."
    )


@dataclass
class _Context:
    """Like schema.context.Context: an object with a ``connection_params`` attribute."""

    connection_params: dict[str, Any] | None = None


@dataclass
class _Socket(AsyncWebSocketAdapter):
    """A socket that records what the handler sends and how it closes."""

    view: Any = None
    incoming: list[dict[str, object]] = field(default_factory=list)
    sent: list[Mapping[str, object]] = field(default_factory=list)
    closed: tuple[int, str] | None = None

    async def iter_json(
        self, *, ignore_parsing_errors: bool = False
    ) -> AsyncGenerator[object, None]:
        for message in self.incoming:
            yield message

    async def send_json(self, message: Mapping[str, object]) -> None:
        self.sent.append(message)

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


class _View:
    """The part of the view a handler calls: ``on_ws_connect``."""

    def __init__(self, reject: bool = False) -> None:
        self.reject = reject
        self.seen: list[dict[str, Any] | None] = []

    async def on_ws_connect(self, context: _Context) -> UnsetType:
        self.seen.append(context.connection_params)
        if self.reject:
            raise ConnectionRejectionError()
        return strawberry.UNSET


def _transport(view: _View, socket: _Socket, context: _Context) -> Any:
    return BaseGraphQLTransportWSHandler[Any, None](
        view=view,  # type: ignore[arg-type]
        websocket=socket,
        context=context,
        root_value=None,
        schema=_SCHEMA,
        connection_init_wait_timeout=timedelta(seconds=10),
    )


def _legacy(view: _View, socket: _Socket, context: _Context) -> Any:
    return BaseGraphQLWSHandler[Any, None](
        view=view,  # type: ignore[arg-type]
        websocket=socket,
        context=context,
        root_value=None,
        schema=_SCHEMA,
        keep_alive=False,
        keep_alive_interval=None,
    )


@pytest.mark.parametrize("make", [_transport, _legacy], ids=["transport-ws", "legacy-ws"])
async def test_connection_init_hands_its_payload_to_on_ws_connect(
    make: Callable[[_View, _Socket, _Context], Any],
) -> None:
    # api.websocket.sign_in_socket reads context.connection_params, an attribute
    # of Depot's Context (not a dict key), set by the handler before on_ws_connect.
    view, socket, context = _View(), _Socket(), _Context()
    handler = make(view, socket, context)
    payload = {"authorization": "Bearer x"}
    await handler.handle_connection_init({"type": "connection_init", "payload": payload})
    message = (
        "Strawberry's handler no longer sets context.connection_params (an attribute) "
        "before calling on_ws_connect: api.websocket.sign_in_socket reads the token there."
    )
    assert view.seen == [payload], message
    assert context.connection_params == payload, message
    assert socket.sent == [{"type": "connection_ack"}]
    # TransportWSHandler and _Watched read these attributes of the handler.
    assert handler.connection_acknowledged is True
    assert handler.websocket is socket
    assert handler.context is context


@pytest.mark.parametrize("make", [_transport, _legacy], ids=["transport-ws", "legacy-ws"])
async def test_an_operation_runs_the_query_of_the_payload_it_was_handed(
    make: Callable[[_View, _Socket, _Context], Any],
) -> None:
    # api.websocket puts the document a persisted hash or documentId names into
    # message["payload"]["query"], then calls Strawberry's handle_subscribe / handle_start.
    view, socket, context = _View(), _Socket(), _Context()
    handler = make(view, socket, context)
    await handler.handle_connection_init({"type": "connection_init", "payload": {}})
    assert handler.view is view, "api.websocket._Watched.refusal reads the handler's `view`"
    start, runs = ("subscribe", "stream") if make is _transport else ("start", "subscribe")
    queries: list[str] = []
    run = getattr(_SCHEMA, runs)

    async def recording(query: str, *args: Any, **kwargs: Any) -> Any:
        queries.append(query)
        return await run(query, *args, **kwargs)

    handler.schema = SimpleNamespace(**{runs: recording})
    payload = {"query": "subscription Filled { hello }"}
    await getattr(handler, f"handle_{start}")({"type": start, "id": "1", "payload": payload})
    for _ in range(100):
        if queries:
            break
        await anyio.sleep(0.01)
    assert queries == [payload["query"]], (
        f"Strawberry's handle_{start} no longer runs self.schema.{runs}(message['payload']"
        "['query']): api.websocket fills in persisted documents there."
    )


async def test_a_rejected_transport_ws_connection_closes_with_4403() -> None:
    # docs/api.md promises 4403 for a refused credential: Strawberry's rejection code.
    socket = _Socket()
    handler = _transport(_View(reject=True), socket, _Context())
    await handler.handle_connection_init({"type": "connection_init", "payload": {}})
    assert socket.closed == (4403, "Forbidden"), (
        "Strawberry no longer closes a rejected graphql-transport-ws connection with 4403: "
        "api.websocket promises that code for a refused credential."
    )
    assert handler.connection_init_received is True
    assert handler.connection_acknowledged is False


async def test_handlers_end_with_the_hook_that_stops_the_watch() -> None:
    # The credential watch stops in TransportWSHandler.shutdown / LegacyWSHandler.cleanup.
    calls: list[str] = []

    class Transport(BaseGraphQLTransportWSHandler[Any, None]):
        async def shutdown(self) -> None:
            calls.append("shutdown")
            await super().shutdown()

    class Legacy(BaseGraphQLWSHandler[Any, None]):
        async def cleanup(self) -> None:
            calls.append("cleanup")
            await super().cleanup()

    common: dict[str, Any] = {"view": _View(), "context": _Context(), "root_value": None}
    await Transport(
        websocket=_Socket(),
        schema=_SCHEMA,
        connection_init_wait_timeout=timedelta(seconds=10),
        **common,
    ).handle()
    await Legacy(
        websocket=_Socket(), schema=_SCHEMA, keep_alive=False, keep_alive_interval=None, **common
    ).handle()
    assert calls == ["shutdown", "cleanup"], (
        "Strawberry's handlers no longer end with shutdown() (graphql-transport-ws) and "
        "cleanup() (graphql-ws): api.websocket stops the credential watch there."
    )


# -- schema/: the schema and its extensions ---------------------------------------


def test_schema_process_errors_override_matches_strawberry() -> None:
    _assert_overrides(_Schema, strawberry.Schema, "process_errors", "schema._Schema")


@pytest.mark.parametrize(
    "name", ["on_operation", "on_parse", "on_validate", "on_execute", "on_stream_result"]
)
def test_extension_hooks_match_strawberry(name: str) -> None:
    _assert_overrides(
        DepotOperation, SchemaExtension, name, f"schema.operation.DepotOperation.{name}"
    )


def test_execution_context_has_the_fields_extensions_use() -> None:
    used = {
        "query": "DepotOperation parses it and keys its caches by it",
        "parse_options": "DepotOperation sets the token cap Strawberry's own parse honours",
        "graphql_document": "DepotOperation stores the parsed document",
        "operation_name": "DepotOperation picks the rules by it",
        "operation_type": "DepotOperation switches a mutation's session to transactions",
        "validation_rules": "DepotOperation sets them",
        "result": "DepotOperation codes its errors",
        "context": "DepotOperation reads Depot's Context",
        "variables": "DepotOperation reads `first` from them for the cost",
        "pre_execution_errors": "DepotOperation validates and refuses through them",
        "schema": "DepotOperation reads the GraphQL schema from it",
    }
    fields = {f.name for f in dataclasses.fields(ExecutionContext)}
    for name, why in used.items():
        assert name in fields or hasattr(ExecutionContext, name), (
            f"Strawberry's ExecutionContext has no `{name}` any more: {why}."
        )


def test_the_default_validation_rules_are_graphql_cores() -> None:
    # DepotOperation replaces the tuple with graphql-core's rules and its own:
    # rules Strawberry added to the default would be dropped.
    context = ExecutionContext(query="{ hello }", schema=_SCHEMA, allowed_operations=())
    assert context.validation_rules == tuple(specified_rules), (
        "Strawberry's ExecutionContext no longer starts from graphql-core's specified_rules: "
        "schema.operation.OperationRules.build must start from what it starts from now."
    )


def test_validate_document_takes_the_schema_the_document_and_the_rules() -> None:
    # schema.operation.Documents validates through it, as Strawberry's ValidationCache does.
    from strawberry.schema.schema import validate_document

    assert _parameters(validate_document) == ["schema", "document", "validation_rules"], (
        "strawberry.schema.schema.validate_document changed: schema.operation.Documents calls it."
    )
    errors = validate_document(_SCHEMA._schema, parse("{ nope }"), tuple(specified_rules))
    assert [error.message for error in errors] == ["Cannot query field 'nope' on type 'Query'."]


def test_validation_goes_through_graphql_validate_by_its_module_name() -> None:
    # tests/test_validation_cache.py counts validations by patching this name.
    from strawberry.schema import schema as schema_module

    assert schema_module.validate is graphql.validate, (
        "strawberry.schema.schema no longer validates with graphql-core's `validate`: "
        "tests/test_validation_cache.py patches it there to count validations."
    )


async def test_parser_cache_still_lets_syntax_errors_escape_extensions() -> None:
    # Why schema.errors.parse_or_none exists; when this fails, Strawberry's own cache may do.
    ended: list[str] = []

    class Ends(SchemaExtension):
        def on_operation(self) -> typing.Iterator[None]:
            yield
            ended.append("after")

    schema = strawberry.Schema(query=_Query, extensions=[lambda: ParserCache(maxsize=8), Ends])
    result = await schema.execute("{ hello ")
    assert result.errors
    assert ended == [], (
        "Strawberry's ParserCache now lets extensions see syntax errors: "
        "schema.errors.parse_or_none (schema.operation) may give way to ParserCache."
    )


async def test_errors_set_before_validation_skip_validation_and_execution() -> None:
    # DepotOperation refuses a costly operation by setting pre_execution_errors in
    # on_validate; Strawberry must then neither validate again nor execute.
    ran: list[str] = []

    @strawberry.type
    class Query:
        @strawberry.field
        def hello(self) -> str:
            ran.append("hello")
            return "hi"

    class Refuse(SchemaExtension):
        def on_validate(self) -> typing.Iterator[None]:
            self.execution_context.pre_execution_errors = [GraphQLError("refused")]
            yield

    result = await strawberry.Schema(query=Query, extensions=[Refuse]).execute("{ hello }")
    assert [error.message for error in (result.errors or [])] == ["refused"], (
        "Strawberry ignores pre_execution_errors set in on_validate: "
        "schema.operation.DepotOperation no longer refuses costly operations."
    )
    assert result.data is None
    assert ran == []
    assert isinstance(strawberry.Schema(query=Query)._schema, GraphQLSchema), (
        "strawberry.Schema._schema is not graphql-core's schema: DepotOperation reads it."
    )


def test_a_rule_raising_validation_aborted_ends_validation_with_its_error() -> None:
    # schema.limits' rule refuses this way, so no other rule runs on the document.
    class Refuse(ValidationRule):
        def enter_document(self, *_args: Any) -> None:
            raise ValidationAbortedError("refused", extensions={"code": "X"})

    schema = strawberry.Schema(query=_Query)._schema
    errors = validate(schema, parse("{ a: hello a: hello(x: 1) nope }"), [Refuse, *specified_rules])
    assert [(error.message, error.extensions) for error in errors] == [
        ("refused", {"code": "X"})
    ], (
        "graphql-core's validate no longer ends at a raised ValidationAbortedError: "
        "schema.limits refuses documents that way."
    )


def test_custom_scalars_are_scalar_definitions() -> None:
    # schema/scalars.py types SCALARS with strawberry.types.scalar.ScalarDefinition.
    assert isinstance(SCALARS[BigInt], ScalarDefinition), (
        "strawberry.scalar(name=...) no longer returns a ScalarDefinition: "
        "schema.scalars.SCALARS (StrawberryConfig.scalar_map) is typed with it."
    )


def test_upload_values_reach_resolvers_as_they_are() -> None:
    # api.multipart puts IncomingPart objects where the files go; resolvers get them.
    part = object()
    assert UploadDefinition.parse_value is not None
    assert UploadDefinition.parse_value(part) is part, (
        "Strawberry's Upload scalar no longer passes values through: "
        "api.multipart's streamed parts would not reach schema.uploads as they are."
    )


def test_plain_fields_are_marked_so_build_schema_can_read_them_directly() -> None:
    # schema._read_plain_fields_directly finds Strawberry's definition on each
    # graphql-core type and replaces the marked resolver of each plain field.
    @strawberry.type
    class Plain:
        some_name: str

        @strawberry.field
        def computed(self) -> str:
            return "x"

    schema = strawberry.Schema(query=Plain)
    graphql_type = schema._schema.type_map["Plain"]
    definition = (graphql_type.extensions or {}).get("strawberry-definition")
    assert definition is not None, (
        "Strawberry no longer keeps its type definition in a graphql-core type's "
        "extensions['strawberry-definition']: schema._read_plain_fields_directly looks there."
    )
    plain, computed = definition.fields
    assert plain.python_name == "some_name"
    assert plain.is_basic_field
    assert not computed.is_basic_field
    assert schema.config.default_resolver is getattr
    assert getattr(graphql_type.fields["someName"].resolve, "_is_default", False), (
        "Strawberry no longer marks a plain field's resolver `_is_default`: "
        "schema._read_plain_fields_directly replaces only marked ones, so it replaces none now."
    )
    assert schema.config.name_converter.get_graphql_name(plain) == "someName"


def test_the_extensions_runner_depot_replaces_is_strawberrys() -> None:
    # schema.operation.OperationRunner stands in for Strawberry's runner through
    # Schema.create_extensions_runner, and returns its four context managers' kinds.
    _assert_overrides(_Schema, strawberry.Schema, "create_extensions_runner", "schema._Schema")
    for name in ("operation", "parsing", "validation", "executing"):
        _assert_overrides(
            OperationRunner,
            SchemaExtensionsRunner,
            name,
            f"schema.operation.OperationRunner.{name}",
        )


def test_the_executor_depot_extends_is_strawberrys() -> None:
    # schema.execution.DepotExecutor overrides graphql-core's execute_fields and calls
    # the executor's own field, completion and error methods with these parameters.
    _assert_overrides(
        DepotExecutor,
        StrawberryGraphQLCoreExecutionContext,
        "execute_fields",
        "schema.execution.DepotExecutor",
    )
    used = {
        "execute_field": [
            "parent_type",
            "source",
            "field_details_list",
            "path",
            "position_context",
        ],
        "complete_value": [
            "return_type",
            "field_details_list",
            "info",
            "path",
            "result",
            "position_context",
        ],
        "complete_awaitable_value": [
            "return_type",
            "field_details_list",
            "info",
            "path",
            "result",
            "position_context",
        ],
        "collect_and_execute_subfields": [
            "return_type",
            "field_details_list",
            "path",
            "result",
            "position_context",
        ],
        "handle_field_error": ["raw_error", "return_type", "field_details_list", "path"],
        "build_resolve_info": ["field_def", "field_nodes", "parent_type", "path"],
    }
    for name, parameters in used.items():
        method = getattr(StrawberryGraphQLCoreExecutionContext, name, None)
        assert method is not None, f"graphql-core's executor has no {name}: DepotExecutor calls it."
        assert _parameters(method)[1:] == parameters, (
            f"graphql-core's executor {name} takes other parameters now: "
            "schema.execution.DepotExecutor calls it, update it."
        )
    # Strawberry's Schema takes the class and hands it on to graphql-core as its executor.
    assert "execution_context_class" in _parameters(strawberry.Schema.__init__)
    _assert_overrides(
        DepotExecutor,
        StrawberryGraphQLCoreExecutionContext,
        "complete_list_item_value",
        "schema.execution.DepotExecutor",
    )


def test_strawberrys_is_type_of_reads_only_the_value() -> None:
    # schema.execution.asks_no_info calls Strawberry's own is_type_of without an info
    # (File and User, Node's types): it must be recognised and ignore it.
    graphql_schema = build_schema()._schema
    for name in ("File", "User"):
        object_type = graphql_schema.get_type(name)
        assert isinstance(object_type, graphql.GraphQLObjectType)
        assert asks_no_info(object_type), (
            f"{name}'s is_type_of is no longer Strawberry's converter closure: "
            "schema.execution.asks_no_info must recognise what replaced it, or build an info."
        )
        check = object_type.is_type_of
        assert check is not None
        assert list(inspect.signature(check).parameters) == ["obj", "_info"]
        assert check(object(), None) is False  # type: ignore[arg-type]
