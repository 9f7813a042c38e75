"""The one GraphQL schema: types, queries, mutations, subscriptions, extensions."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

import strawberry
from graphql import GraphQLError, GraphQLObjectType
from strawberry.extensions import SchemaExtension
from strawberry.extensions.runner import SchemaExtensionsRunner
from strawberry.schema.config import StrawberryConfig
from strawberry.schema.schema import DEFAULT_ALLOWED_OPERATION_TYPES
from strawberry.tools import merge_types
from strawberry.types import ExecutionContext, ExecutionResult, Info
from strawberry.types.base import StrawberryObjectDefinition
from strawberry.types.field import StrawberryField
from strawberry.types.graphql import OperationType

from schema import operation
from schema.access_tokens import AccessToken, AccessTokenMutation, AccessTokenQuery
from schema.admin import AdminMutation, AdminQuery
from schema.auth import AuthMutation
from schema.direct_uploads import DirectUploadMutation
from schema.email import EmailMutation
from schema.events import Subscription
from schema.execution import CALLS, READS, DepotExecutor
from schema.files import FileMutation, FileQuery
from schema.jobs import JobMutation, JobQuery
from schema.limits import Limits
from schema.multipart_uploads import MultipartUploadMutation, MultipartUploadQuery
from schema.nodes import File, Job, User
from schema.operation import DepotOperation, OperationRules, OperationRunner
from schema.pipelines import PipelineTemplate, PipelineTemplateMutation, PipelineTemplateQuery
from schema.query import Query as NodeQuery
from schema.resumable_uploads import (
    ResumableUpload,
    ResumableUploadMutation,
    ResumableUploadQuery,
)
from schema.scalars import SCALARS
from schema.uploads import UploadMutation
from schema.webhooks import WebhookMutation, WebhookQuery

Query = merge_types(
    "Query",
    (
        NodeQuery,
        AccessTokenQuery,
        AdminQuery,
        FileQuery,
        ResumableUploadQuery,
        MultipartUploadQuery,
        JobQuery,
        WebhookQuery,
        PipelineTemplateQuery,
    ),
)
Mutation = merge_types(
    "Mutation",
    (
        AuthMutation,
        EmailMutation,
        AccessTokenMutation,
        AdminMutation,
        DirectUploadMutation,
        UploadMutation,
        ResumableUploadMutation,
        MultipartUploadMutation,
        FileMutation,
        JobMutation,
        WebhookMutation,
        PipelineTemplateMutation,
    ),
)


class _Schema(strawberry.Schema):
    """Depot's schema: ``rules``' one extension (see schema.operation for why one), made
    per operation so each gets fresh state; its caches belong to the rules."""

    def __init__(self, *, rules: OperationRules, **kwargs: Any) -> None:
        super().__init__(extensions=[functools.partial(DepotOperation, rules)], **kwargs)
        # Without a directive (whose extension Strawberry would add), an operation
        # runs without Strawberry's extension machinery: schema.operation.execute.
        self.rules = None if self.directives else rules

    async def execute(
        self,
        query: str | None,
        variable_values: dict[str, Any] | None = None,
        context_value: Any | None = None,
        root_value: Any | None = None,
        operation_name: str | None = None,
        allowed_operation_types: Iterable[OperationType] | None = None,
        operation_extensions: dict[str, Any] | None = None,
    ) -> ExecutionResult:
        if self.rules is None:
            return await super().execute(
                query,
                variable_values,
                context_value,
                root_value,
                operation_name,
                allowed_operation_types,
                operation_extensions,
            )
        return await operation.execute(
            self,
            self.rules,
            query,
            variable_values,
            context_value,
            root_value,
            operation_name,
            DEFAULT_ALLOWED_OPERATION_TYPES
            if allowed_operation_types is None
            else allowed_operation_types,
            operation_extensions,
        )

    def create_extensions_runner(
        self, execution_context: ExecutionContext, extensions: list[SchemaExtension]
    ) -> SchemaExtensionsRunner:
        # DepotOperation's hooks called without Strawberry's per-hook context managers.
        return OperationRunner(execution_context=execution_context, extensions=extensions)

    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        # schema.operation codes every error, logging what deserves it (unexpected
        # errors, with their request id); Strawberry's default would log every
        # client mistake as an error.
        pass


@functools.cache
def build_schema(
    *,
    max_depth: int = 10,
    max_tokens: int = 1000,
    max_aliases: int = 15,
    max_directives: int = 20,
    max_cost: int = 5000,
    introspection: bool = True,
    suggestions: bool = True,
    traced: bool = False,
    metrics: bool = True,
) -> strawberry.Schema:
    """The schema with its limits (``schema.limits``) and caches, built once per set of limits.

    Building one takes about a third of an app's start. A built schema holds
    no per-app state (its extension is a factory, called per operation; its
    document caches hold only what the schema's rules made of a text), so
    every app of a process with the same limits shares it: tests start
    hundreds of apps. ``introspection`` and ``suggestions`` are development
    aids that production turns off (``DEPOT_GRAPHQL_INTROSPECTION``,
    ``DEPOT_GRAPHQL_SUGGESTIONS``); they are part of the cache's key too, as
    is ``metrics`` (``DEPOT_METRICS_ENABLED``).
    ``traced`` adds a span per operation (:mod:`schema.tracing`), for a
    process that traces (:func:`core.tracing.configure_tracing`).
    """
    rules = OperationRules.build(
        limits=Limits(max_depth=max_depth, max_aliases=max_aliases, max_directives=max_directives),
        max_tokens=max_tokens,
        max_cost=max_cost,
        introspection=introspection,
        suggestions=suggestions,
        metrics=metrics,
        traced=traced,
    )
    schema = _Schema(
        rules=rules,
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        types=[User, AccessToken, File, ResumableUpload, Job, PipelineTemplate],
        config=StrawberryConfig(scalar_map=SCALARS),
        # Plain fields (the readers below) read and completed directly: schema.execution.
        execution_context_class=DepotExecutor,
    )
    _read_plain_fields_directly(schema)
    return schema


def _read_plain_fields_directly(schema: strawberry.Schema) -> None:
    """Resolve each plain field by one ``getattr``, and each ``(self, info)`` resolver by one call.

    Strawberry resolves a plain field (no resolver, no extension) through two
    calls of its own per field (``_get_basic_result``, then
    ``StrawberryField.get_result``, which calls the configured default
    resolver, ``getattr``): a page of 50 files has some 300 such fields. The
    same ``getattr``, directly, is what graphql-core calls now, marked for
    :class:`schema.execution.DepotExecutor`'s short path.

    A resolver that takes only ``self`` and ``info`` (``File.owner``, once per
    node of a page) goes through some ten calls of Strawberry's per field:
    argument conversion it has none for, the field-extension chain it has none
    in, ``get_result``, the resolver's ``__call__``. It is now called with
    Strawberry's own ``Info`` directly. Fields with arguments, a permission or
    another extension, or an exception handler are left as they are.
    """
    if schema.config.default_resolver is not getattr:
        return
    names = schema.config.name_converter
    converter = schema.schema_converter
    info_class = schema.config.info_class
    for graphql_type in schema._schema.type_map.values():
        if not isinstance(graphql_type, GraphQLObjectType):
            continue
        definition = (graphql_type.extensions or {}).get("strawberry-definition")
        if not isinstance(definition, StrawberryObjectDefinition):
            continue
        for field in definition.fields:
            graphql_field = graphql_type.fields.get(names.get_graphql_name(field))
            if graphql_field is None:
                continue
            # Strawberry marks its plain-field resolver; one that handles
            # exceptions into union results is not marked.
            if field.is_basic_field and getattr(graphql_field.resolve, "_is_default", False):
                graphql_field.resolve = _reader(field.python_name)
            elif _takes_self_and_info(field) and not converter._get_field_exception_handlers(field):
                graphql_field.resolve = _caller(field, info_class)


def _reader(name: str) -> Any:
    def read(source: Any, _info: Any, **_arguments: Any) -> Any:
        return getattr(source, name)

    read._is_default = True  # type: ignore[attr-defined] # as Strawberry marks its own
    setattr(read, READS, name)  # for DepotExecutor's short path
    return read


def _takes_self_and_info(field: StrawberryField) -> bool:
    """Whether ``field``'s resolver is a method of ``self`` (and ``info``) alone, bare."""
    resolver = field.base_resolver
    return (
        resolver is not None
        and not field.extensions
        and not field.arguments
        and not field.is_subscription
        and resolver.self_parameter is not None
        and resolver.root_parameter is None
        and resolver.parent_parameter is None
        and callable(resolver.wrapped_func)
        and not isinstance(resolver.wrapped_func, staticmethod | classmethod)
    )


def _caller(field: StrawberryField, info_class: type[Info[Any, Any]]) -> Any:
    resolver = field.base_resolver
    assert resolver is not None
    method: Callable[..., Any] = resolver.wrapped_func  # type: ignore[assignment] # a plain method
    info_parameter = resolver.info_parameter
    if info_parameter is None:

        def call(source: Any, _info: Any, **_arguments: Any) -> Any:
            return method(source)

        setattr(call, CALLS, True)  # for DepotExecutor's short path
        return call
    name = info_parameter.name

    def call_with_info(source: Any, info: Any, **_arguments: Any) -> Any:
        return method(source, **{name: info_class(_raw_info=info, _field=field)})

    setattr(call_with_info, CALLS, True)
    return call_with_info


def export_sdl() -> str:
    """The schema in SDL, as checked into ``schema.graphql``."""
    return build_schema().as_str() + "\n"
