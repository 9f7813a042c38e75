"""The one extension of Depot's schema: what every operation goes through.

Each hook does what used to take one Strawberry extension each, in the same
order:

* ``on_operation``: when tracing is on, the operation's span
  (:func:`schema.tracing.open_span`) around all the rest; the parser's token
  cap (``DEPOT_GRAPHQL_MAX_TOKENS``), the
  validation rules (graphql-core's, :func:`schema.limits.limit_rule`'s,
  :func:`schema.validation.request_rules`', and graphql-core's
  no-introspection rule when introspection is off), fresh dataloaders
  (``schema.loaders``); once the operation ends, every error coded
  (:func:`schema.errors.coded_errors`), the operation counted
  (:func:`schema.metrics.record_operation`) and its database session closed;
* ``on_parse``: the document from a cache keyed by its text, unless it does
  not parse (:func:`schema.errors.parse_or_none`);
* ``on_validate``: the validation errors from a cache keyed by the text and
  the rules, then the cost check (:func:`schema.limits.cost_refusal`), whose
  cost is cached too when the operation has no variables;
* ``on_execute``: a mutation's session switched to transactions;
* ``on_stream_result``: each streamed result's errors coded.

Why one: Strawberry wraps every hook of every extension in a context manager
for every operation (a ``getattr``, an ``inspect`` check, a
``contextlib.contextmanager`` and its ``update_wrapper`` each), which made
nine extensions a fifth of a ``{ __typename }`` request.

The caches are per schema and bounded (:data:`CACHED_DOCUMENTS` texts). They
are keyed by the document's text, whose hash Python keeps on the string,
rather than by the parsed document, which graphql-core hashes node by node
on every lookup.
"""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, cast

from graphql import (
    ASTValidationRule,
    DocumentNode,
    GraphQLError,
    GraphQLSchema,
    OperationDefinitionNode,
    get_operation_ast,
    parse,
    specified_rules,
)
from graphql import ExecutionResult as GraphQLExecutionResult
from graphql import execute as graphql_execute
from graphql.validation import NoSchemaIntrospectionCustomRule
from starlette.websockets import WebSocket
from strawberry.exceptions import MissingQueryError
from strawberry.execution import optimized_is_awaitable
from strawberry.extensions import SchemaExtension
from strawberry.extensions.context import (
    ExecutingContextManager,
    OperationContextManager,
    ParsingContextManager,
    ValidationContextManager,
)
from strawberry.extensions.runner import SchemaExtensionsRunner
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError
from strawberry.schema.schema import validate_document
from strawberry.types import ExecutionContext
from strawberry.types.execution import ExecutionResult, PreExecutionError, StreamExecutionResult
from strawberry.types.graphql import OperationType

from schema import limits
from schema.errors import coded_errors, parse_or_none
from schema.limits import Limits, limit_rule, operation_cost
from schema.loaders import Loaders
from schema.metrics import record_operation
from schema.tracing import OpenSpan, close_span, open_span
from schema.validation import request_rules

if TYPE_CHECKING:
    from strawberry import Schema

# Distinct document texts each cache keeps (least recently used dropped first),
# as Strawberry's ParserCache and ValidationCache kept 256 each.
CACHED_DOCUMENTS: Final = 256

_Rules = tuple[type[ASTValidationRule], ...]


class Documents:
    """One schema's documents, each parsed, validated and (without variables) costed once.

    Keyed by text: a persisted query, a trusted document and the same text
    sent by hand share their entries.
    """

    def __init__(self, max_tokens: int) -> None:
        self.max_tokens = max_tokens
        self.parsed = functools.lru_cache(maxsize=CACHED_DOCUMENTS)(self._parse)
        self.errors = functools.lru_cache(maxsize=CACHED_DOCUMENTS)(self._validate)
        self.operation = functools.lru_cache(maxsize=CACHED_DOCUMENTS)(self._operation)

    def _parse(self, query: str) -> DocumentNode | None:
        return parse_or_none(query, self.max_tokens)

    def _validate(self, schema: GraphQLSchema, query: str, rules: _Rules) -> list[GraphQLError]:
        document = self.parsed(query)
        assert document is not None, "validated only once Strawberry has parsed it"
        # Strawberry's own validate_document, as its ValidationCache calls it.
        return validate_document(schema, document, rules)

    def _operation(
        self, schema: GraphQLSchema, query: str, name: str | None
    ) -> tuple[OperationDefinitionNode | None, int | None]:
        """The operation to run, and its cost when that does not depend on variables."""
        document = self.parsed(query)
        operation = get_operation_ast(document, name) if document is not None else None
        if operation is None or operation.variable_definitions:
            return operation, None
        assert document is not None
        return operation, operation_cost(schema, document, operation, {})


@dataclass(frozen=True)
class OperationRules:
    """What one schema's operations are held to, fixed when the schema is built."""

    documents: Documents
    max_cost: int
    suggestions: bool
    metrics: bool
    traced: bool
    # By (operationName given, over a WebSocket): the whole tuple, graphql-core's
    # rules first, so each request takes one of four fixed tuples.
    rules: Mapping[tuple[bool, bool], _Rules]

    @classmethod
    def build(
        cls,
        *,
        limits: Limits,
        max_tokens: int,
        max_cost: int,
        introspection: bool,
        suggestions: bool,
        metrics: bool,
        traced: bool,
    ) -> OperationRules:
        ours: _Rules = (limit_rule(limits),)
        closing: _Rules = () if introspection else (NoSchemaIntrospectionCustomRule,)
        rules = {
            (named, websocket): (
                *specified_rules,
                *ours,
                *request_rules(named=named, websocket=websocket),
                *closing,
            )
            for named in (False, True)
            for websocket in (False, True)
        }
        return cls(Documents(max_tokens), max_cost, suggestions, metrics, traced, rules)


class DepotOperation(SchemaExtension):
    """The hooks of every operation (see the module's docstring), for one schema's rules."""

    def __init__(self, rules: OperationRules, *, execution_context: Any = None) -> None:
        super().__init__(execution_context=execution_context)
        self.rules = rules
        self._streamed = False
        self._streamed_errors: list[GraphQLError] | None = None
        self._span: OpenSpan | None = None
        self._started = 0.0

    def begin(self) -> None:
        """The operation's start: its span, parser cap, rules and fresh loaders."""
        context = self.execution_context
        rules = self.rules
        self._span = open_span() if rules.traced else None
        request = context.context
        context.parse_options["max_tokens"] = rules.documents.max_tokens
        over_websocket = isinstance(getattr(request, "request", None), WebSocket)
        # Before parsing, operation_name is the one the request gave.
        context.validation_rules = rules.rules[(context.operation_name is not None, over_websocket)]
        # Fresh loaders, so no cached row outlives the operation.
        request.loaders = Loaders(request.db)
        self._started = time.perf_counter()

    def finish(self) -> None:
        """Once the operation ran without raising: its errors coded, the operation counted."""
        context = self.execution_context
        rules = self.rules
        result = context.result
        # A streamed result was coded before it was sent; coding it twice
        # would turn its codes into INTERNAL_SERVER_ERROR.
        if not self._streamed and result is not None and result.errors:
            result.errors = coded_errors(
                result.errors,
                suggestions=rules.suggestions,
                request_id=getattr(context.context, "request_id", None),
            )
        if rules.metrics:
            errors = self._streamed_errors if self._streamed else getattr(result, "errors", None)
            record_operation(context, time.perf_counter() - self._started, errors)

    async def close(self) -> None:
        """Whatever happened: the database session closed, the span ended."""
        try:
            # No WebSocket holds a session (on PostgreSQL, a connection) between operations.
            await self.execution_context.context.db.close()
        finally:
            if self._span is not None:
                close_span(self._span, self.execution_context)

    async def on_operation(self) -> AsyncIterator[None]:
        self.begin()
        try:
            yield
            self.finish()
        finally:
            await self.close()

    def parse(self) -> None:
        """The document from the cache keyed by its text."""
        context = self.execution_context
        if context.query:
            context.graphql_document = self.rules.documents.parsed(context.query)

    def on_parse(self) -> Iterator[None]:
        self.parse()
        yield

    def validate(self) -> None:
        """The validation errors (cached), then the cost check."""
        context = self.execution_context
        query, document, documents = context.query, context.graphql_document, self.rules.documents
        schema = context.schema._schema
        name = context.operation_name
        assert document is not None, "Strawberry validates parsed documents only"
        cost: int | None = None
        if query and document is documents.parsed(query):
            errors = documents.errors(schema, query, context.validation_rules)
            if not errors:
                operation, cost = documents.operation(schema, query, name)
        else:  # parsed by Strawberry, or our entry dropped meanwhile: nothing cached
            errors = validate_document(schema, document, context.validation_rules)
            operation = get_operation_ast(document, name)
        context.pre_execution_errors = errors
        if not errors and operation is not None:
            if cost is None:
                cost = operation_cost(schema, document, operation, context.variables or {})
            # Looked up on the module, so bench.limits can measure Depot without it.
            refusal = limits.cost_refusal(cost, self.rules.max_cost, operation)
            if refusal is not None:
                context.pre_execution_errors = [refusal]

    def on_validate(self) -> Iterator[None]:
        self.validate()
        yield

    async def execute(self) -> None:
        """A mutation's session switched to transactions; a query's reads run without one."""
        context = self.execution_context
        if context.operation_type is OperationType.MUTATION:
            await context.context.db.for_writes()

    async def on_execute(self) -> AsyncIterator[None]:
        await self.execute()
        yield

    def on_stream_result(self, result: StreamExecutionResult) -> Iterator[None]:
        # WebSocket operations send each result before on_operation resumes.
        self._streamed = True
        if isinstance(result, ExecutionResult) and result.errors:
            result.errors = coded_errors(
                result.errors,
                suggestions=self.rules.suggestions,
                request_id=getattr(self.execution_context.context, "request_id", None),
            )
            # The operation's outcome is its first error.
            self._streamed_errors = self._streamed_errors or result.errors
        yield


# -- the runner ----------------------------------------------------------------------


class OperationRunner(SchemaExtensionsRunner):
    """Strawberry's extension runner; with DepotOperation alone, its hooks called directly.

    Strawberry's runner wraps each hook of each extension, for every
    operation, in a ``contextlib`` context manager (``getattr``, an
    ``inspect`` check, ``contextlib.contextmanager`` and its
    ``update_wrapper``, an ``ExitStack``): some 100 Python calls for
    DepotOperation's four hooks, a tenth of a ``{ __typename }`` request.
    With DepotOperation the only extension (always, bar a schema with
    directives), each stage calls its method instead; the generator hooks stay
    for Strawberry's own paths (``on_stream_result``, and any other runner).
    """

    def __init__(
        self, execution_context: ExecutionContext, extensions: list[SchemaExtension] | None = None
    ) -> None:
        super().__init__(execution_context, extensions)
        only = self.extensions[0] if len(self.extensions) == 1 else None
        self._depot = only if isinstance(only, DepotOperation) else None

    def operation(self) -> OperationContextManager:
        return _Operation(self._depot) if self._depot else super().operation()

    def parsing(self) -> ParsingContextManager:
        return _Parsing(self._depot) if self._depot else super().parsing()

    def validation(self) -> ValidationContextManager:
        return _Validation(self._depot) if self._depot else super().validation()

    def executing(self) -> ExecutingContextManager:
        return _Executing(self._depot) if self._depot else super().executing()


_SYNC_REFUSED: Final = "DepotOperation's hooks are async: the operation must run with execute()."


class _Operation(OperationContextManager):
    """``on_operation``: ``close`` always, after ``finish`` when the block did not raise."""

    __slots__ = ("depot",)

    def __init__(self, depot: DepotOperation) -> None:
        self.depot = depot

    async def __aenter__(self) -> None:
        self.depot.begin()

    async def __aexit__(self, exc_type: Any, exc: Any, traceback: Any) -> None:
        try:
            if exc_type is None:
                self.depot.finish()
        finally:
            await self.depot.close()

    def __enter__(self) -> None:
        raise RuntimeError(_SYNC_REFUSED)


class _Parsing(ParsingContextManager):
    __slots__ = ("depot",)

    def __init__(self, depot: DepotOperation) -> None:
        self.depot = depot

    async def __aenter__(self) -> None:
        self.depot.parse()

    async def __aexit__(self, exc_type: Any, exc: Any, traceback: Any) -> None:
        return None

    def __enter__(self) -> None:
        self.depot.parse()

    def __exit__(self, exc_type: Any, exc: Any, traceback: Any) -> None:
        return None


class _Validation(ValidationContextManager):
    __slots__ = ("depot",)

    def __init__(self, depot: DepotOperation) -> None:
        self.depot = depot

    async def __aenter__(self) -> None:
        self.depot.validate()

    async def __aexit__(self, exc_type: Any, exc: Any, traceback: Any) -> None:
        return None

    def __enter__(self) -> None:
        self.depot.validate()

    def __exit__(self, exc_type: Any, exc: Any, traceback: Any) -> None:
        return None


class _Executing(ExecutingContextManager):
    __slots__ = ("depot",)

    def __init__(self, depot: DepotOperation) -> None:
        self.depot = depot

    async def __aenter__(self) -> None:
        await self.depot.execute()

    async def __aexit__(self, exc_type: Any, exc: Any, traceback: Any) -> None:
        return None

    def __enter__(self) -> None:
        raise RuntimeError(_SYNC_REFUSED)


# -- one operation, without Strawberry's runner -----------------------------------------


async def execute(
    schema: Schema,
    rules: OperationRules,
    query: str | None,
    variable_values: dict[str, Any] | None,
    context_value: Any,
    root_value: Any,
    operation_name: str | None,
    allowed_operation_types: Iterable[OperationType],
    operation_extensions: dict[str, Any] | None,
) -> ExecutionResult:
    """Strawberry's ``Schema.execute`` for a schema whose one extension is DepotOperation.

    The same steps in the same order, with the same outcomes: the operation
    begun; the document parsed (from the cache, else by graphql-core, whose
    syntax error is the answer); its type found (``CannotGetOperationTypeError``
    raised) and allowed (``InvalidOperationTypeError`` raised, as
    ``MissingQueryError`` for no document); validated; a mutation's session
    switched to writes; graphql-core's ``execute`` with ``schema``'s executor.
    ``finish`` codes and counts what an operation answered, unless it raised
    (then, as in Strawberry, the error is the answer, uncoded: the view masks
    it); ``close`` runs whatever happened.

    What is gone is what Strawberry builds around those steps for every
    operation whatever its extensions: the extensions' instances and runner,
    a middleware manager (none of DepotOperation's hooks resolves fields, so
    graphql-core gets none), the operation type worked out again at each
    step, the extensions' results (DepotOperation has none).
    ``Schema.process_errors`` is not called: Depot's does nothing
    (``schema.operation`` logs what deserves it).
    """
    context = _Execution(
        query=query,
        schema=schema,
        allowed_operations=allowed_operation_types,
        context=context_value,
        root_value=root_value,
        variables=variable_values,
        provided_operation_name=operation_name,
        operation_extensions=operation_extensions,
    )
    depot = DepotOperation(rules)
    depot.execution_context = context  # as Strawberry's execute sets it, not the constructor
    try:
        depot.begin()
        try:
            result = await _run(schema, depot, context)
        except BaseException:
            await depot.close()
            raise
        try:
            depot.finish()
        finally:
            await depot.close()
    except (MissingQueryError, CannotGetOperationTypeError, InvalidOperationTypeError):
        raise
    except Exception as exc:  # noqa: BLE001 - as Strawberry: the error is the answer
        error = exc if isinstance(exc, GraphQLError) else GraphQLError(str(exc), original_error=exc)
        return _refused(context, error)
    if isinstance(result, GraphQLExecutionResult):
        if result.errors:
            context.pre_execution_errors = result.errors
        result = ExecutionResult(data=result.data, errors=result.errors, extensions={})
        context.result = result
    return result


class _Execution(ExecutionContext):
    """Strawberry's execution context, its operation's type worked out once per document.

    Strawberry's ``operation_type`` looks for the operation in the document
    every time it is asked; the runner, ``DepotOperation.execute`` and the
    metrics each ask.
    """

    _typed: tuple[DocumentNode, OperationType] | None = None

    @property
    def operation_type(self) -> OperationType:
        document, typed = self.graphql_document, self._typed
        if typed is not None and typed[0] is document:
            return typed[1]
        kind = super().operation_type
        if document is not None:
            self._typed = (document, kind)
        return kind


def _refused(context: ExecutionContext, *errors: GraphQLError) -> PreExecutionError:
    """A refusal before execution, as Strawberry's ``_handle_execution_result`` leaves it."""
    context.pre_execution_errors = list(errors)
    result = PreExecutionError(data=None, errors=list(errors), extensions={})
    context.result = result
    return result


async def _run(
    schema: Schema, depot: DepotOperation, context: ExecutionContext
) -> ExecutionResult | GraphQLExecutionResult:
    """Between ``begin`` and ``finish``: a refusal before execution, or what graphql-core gave."""
    if not context.query:
        raise MissingQueryError
    depot.parse()
    if context.graphql_document is None:
        try:
            context.graphql_document = parse(context.query, **context.parse_options)
        except GraphQLError as error:
            return _refused(context, error)
        except Exception as exc:  # noqa: BLE001 - as Strawberry
            return _refused(context, GraphQLError(str(exc), original_error=exc))
    try:
        operation_type = context.operation_type
    except RuntimeError as error:
        raise CannotGetOperationTypeError(context.operation_name) from error
    if operation_type not in context.allowed_operations:
        raise InvalidOperationTypeError(operation_type)
    depot.validate()
    if context.pre_execution_errors:
        return _refused(context, *context.pre_execution_errors)
    await depot.execute()
    outcome = graphql_execute(
        schema._schema,
        context.graphql_document,
        root_value=context.root_value,
        variable_values=context.variables,
        operation_name=context.operation_name,
        context_value=context.context,
        # Strawberry's check, as its Schema.execute gives it (a plain bool, not a TypeGuard).
        is_awaitable=cast(Any, optimized_is_awaitable),
        executor_class=schema.execution_context_class,
        operation_extensions=context.operation_extensions,
    )
    result = outcome if isinstance(outcome, GraphQLExecutionResult) else await outcome
    context.result = result
    if result.errors:
        context.pre_execution_errors = result.errors
    return result
