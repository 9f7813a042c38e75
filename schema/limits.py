"""Limits on what one GraphQL operation may ask for, checked before any resolver runs.

The parser bounds the document's size (``DEPOT_GRAPHQL_MAX_TOKENS``); the rules
here bound what a small document can still ask for:

* depth: the deepest chain of fields with selections (introspection fields
  aside, as Strawberry's ``QueryDepthLimiter`` counted; graphql-core's
  ``MaxIntrospectionDepthRule``, one of its specified rules, bounds
  introspection), and how deep fragments spread inside fragments;
* aliases and directives, counted where fragments are spread, and how often
  one response name repeats in a selection (the overlapping-fields check
  compares every pair);
* cost: what resolving the operation may take, from its variables, so it is
  checked per request after the (cached) validation. See :func:`operation_cost`.

A refusal ends validation at once (graphql-core's other rules, such as the
quadratic overlapping-fields check, never run on a refused document) and
carries its own ``extensions.code``. Every rule is a class made once per
schema, so Strawberry's validation cache keys stay the same from request to
request.

Errors are bounded too (:func:`bound_errors`): at most :data:`MAX_ERRORS` per
response, and no message longer than :data:`MAX_MESSAGE_CHARS`, so a huge
input echoed back in a coercion error is cut.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from graphql import (
    DirectiveNode,
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLField,
    GraphQLInterfaceType,
    GraphQLList,
    GraphQLNamedType,
    GraphQLObjectType,
    GraphQLSchema,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    ValidationRule,
    VariableNode,
    get_named_type,
    get_nullable_type,
    is_leaf_type,
)
from graphql.validation.validate import ValidationAbortedError

from core.pipelines import MAX_STEP_INPUTS
from schema.pagination import DEFAULT_PAGE, MAX_PAGE
from workers.archive import MAX_FILES as ARCHIVE_MAX_FILES
from workers.pipeline import MAX_STEPS as PIPELINE_MAX_STEPS

# Most errors one response carries; the rest are summed up in one last error.
MAX_ERRORS: Final = 20
# Longest error message, so an input echoed in a coercion error stays small.
MAX_MESSAGE_CHARS: Final = 1000

# The most items a plain (non-connection) list field can hold, from the code
# that fills it. A list missing here counts as a full page.
LIST_MAXIMA: Final[Mapping[tuple[str, str], int]] = {
    # An archive job reads the most files: workers.archive.MAX_FILES.
    ("Job", "inputs"): ARCHIVE_MAX_FILES,
    # workers.pipeline.MAX_STEPS.
    ("Job", "steps"): PIPELINE_MAX_STEPS,
    ("PipelineStep", "use"): PIPELINE_MAX_STEPS,
}

# Lists bounded in all across the steps of one pipeline, counted per step as an
# even share: ``Job.steps`` multiplies them by its MAX_STEPS, so the product is
# the true bound on their sum, whichever step holds the files. A step's job's
# inputs: core.pipelines.MAX_STEP_INPUTS in all, where an archive step alone
# could read 1,000 (32 steps would count 32,000, and refuse a pipeline's
# natural view, ``job { steps { job { inputs { id } } } }``).
STEP_SHARES: Final[Mapping[tuple[str, str], int]] = {
    ("Job", "inputs"): -(-MAX_STEP_INPUTS // PIPELINE_MAX_STEPS),
}


@dataclass(frozen=True)
class Limits:
    """What one operation's document may hold (``DEPOT_GRAPHQL_MAX_*``)."""

    max_depth: int
    max_aliases: int
    max_directives: int


class LimitExceeded(ValidationAbortedError):
    """A document over a limit; raised, it ends graphql-core's validation at once."""


def _refuse(message: str, nodes: Any, code: str, **extensions: int) -> LimitExceeded:
    return LimitExceeded(message, nodes, extensions={"code": code, **extensions})


@dataclass
class _Tally:
    depth: int = 0
    aliases: int = 0
    directives: int = 0
    nesting: int = 0  # fragments spread inside fragments
    # How often each response name occurs at this level (inline fragments and
    # spreads merged in), and the most any name occurs at any level below.
    names: Counter[str] = field(default_factory=Counter)
    repeats: int = 0


def _directives(node: Any) -> int:
    found: tuple[DirectiveNode, ...] = node.directives or ()
    return len(found)


def _direct_spreads(selections: SelectionSetNode) -> Iterator[str]:
    stack = [selections]
    while stack:
        for selection in stack.pop().selections:
            if isinstance(selection, FragmentSpreadNode):
                yield selection.name.value
            elif selection.selection_set is not None:  # type: ignore[attr-defined]
                stack.append(selection.selection_set)  # type: ignore[attr-defined]


def _fragment_order(fragments: Mapping[str, FragmentDefinitionNode]) -> list[str]:
    """Fragments, each after those it spreads; without recursion, cycles cut."""
    order: list[str] = []
    done: set[str] = set()
    for root in fragments:
        if root in done:
            continue
        path = [(root, iter(list(_direct_spreads(fragments[root].selection_set))))]
        on_path = {root}
        while path:
            name, spreads = path[-1]
            for spread in spreads:
                if spread in fragments and spread not in done and spread not in on_path:
                    path.append(
                        (spread, iter(list(_direct_spreads(fragments[spread].selection_set))))
                    )
                    on_path.add(spread)
                    break
            else:
                path.pop()
                on_path.discard(name)
                done.add(name)
                order.append(name)
    return order


def _tally(selections: SelectionSetNode, fragments: Mapping[str, _Tally]) -> _Tally:
    # Recursion within one definition only: the parser bounds its nesting.
    tally = _Tally()
    for selection in selections.selections:
        tally.directives += _directives(selection)
        if isinstance(selection, FragmentSpreadNode):
            spread = fragments.get(selection.name.value, _Tally())
            tally.depth = max(tally.depth, spread.depth)
            tally.aliases += spread.aliases
            tally.directives += spread.directives
            tally.nesting = max(tally.nesting, spread.nesting + 1)
            tally.names.update(spread.names)
            tally.repeats = max(tally.repeats, spread.repeats)
            continue
        if isinstance(selection, FieldNode):
            tally.names[(selection.alias or selection.name).value] += 1
            if selection.alias is not None:
                tally.aliases += 1
        if selection.selection_set is None:  # type: ignore[attr-defined]
            continue
        inner = _tally(selection.selection_set, fragments)  # type: ignore[attr-defined]
        tally.aliases += inner.aliases
        tally.directives += inner.directives
        tally.nesting = max(tally.nesting, inner.nesting)
        if isinstance(selection, FieldNode):
            tally.repeats = max(tally.repeats, inner.repeats, *inner.names.values())
            if not selection.name.value.startswith("__"):
                tally.depth = max(tally.depth, inner.depth + 1)
        else:  # an inline fragment: its fields are at this level
            tally.names.update(inner.names)
            tally.repeats = max(tally.repeats, inner.repeats)
            tally.depth = max(tally.depth, inner.depth)
    return tally


def limit_rule(limits: Limits) -> type[ValidationRule]:
    """The depth, fragment, alias and directive limits, as one rule class.

    Made once per schema (``schema.operation``), so the validation cache's key
    stays the same from request to request.
    """

    class _LimitsRule(ValidationRule):
        def enter_document(self, node: DocumentNode, *_args: Any) -> None:
            definitions = {
                d.name.value: d for d in node.definitions if isinstance(d, FragmentDefinitionNode)
            }
            tallies: dict[str, _Tally] = {}
            for name in _fragment_order(definitions):
                fragment = definitions[name]
                tally = _tally(fragment.selection_set, tallies)
                tally.directives += _directives(fragment)
                tallies[name] = tally
            for operation in node.definitions:
                if isinstance(operation, OperationDefinitionNode):
                    _check(operation, _tally(operation.selection_set, tallies), limits)

    return _LimitsRule


def _check(operation: OperationDefinitionNode, tally: _Tally, limits: Limits) -> None:
    name = operation.name.value if operation.name else "anonymous"
    # Each fragment nests a selection at least one level: a chain of fragments
    # deeper than fields may nest is refused before anything recurses along it.
    if tally.nesting > limits.max_depth:
        raise _refuse(
            f"'{name}' nests fragments {tally.nesting} deep; at most {limits.max_depth} "
            "(DEPOT_GRAPHQL_MAX_DEPTH).",
            operation,
            "GRAPHQL_VALIDATION_FAILED",
        )
    if tally.depth > limits.max_depth:
        # Strawberry's QueryDepthLimiter's message, kept for clients that match it.
        raise _refuse(
            f"'{name}' exceeds maximum operation depth of {limits.max_depth}",
            operation,
            "GRAPHQL_VALIDATION_FAILED",
        )
    if tally.aliases > limits.max_aliases:
        raise _refuse(
            f"'{name}' has {tally.aliases} aliases; at most {limits.max_aliases} "
            "(DEPOT_GRAPHQL_MAX_ALIASES).",
            operation,
            "GRAPHQL_VALIDATION_FAILED",
        )
    repeats = max(tally.repeats, *tally.names.values(), 0)
    if repeats > limits.max_aliases:
        # graphql-core's overlapping-fields check compares every pair of fields
        # that share a response name: quadratic in how often a name repeats.
        raise _refuse(
            f"'{name}' asks for one response name {repeats} times in one selection; at most "
            f"{limits.max_aliases} (DEPOT_GRAPHQL_MAX_ALIASES).",
            operation,
            "GRAPHQL_VALIDATION_FAILED",
        )
    tally.directives += _directives(operation)
    if tally.directives > limits.max_directives:
        raise _refuse(
            f"'{name}' has {tally.directives} directives; at most {limits.max_directives} "
            "(DEPOT_GRAPHQL_MAX_DIRECTIVES).",
            operation,
            "GRAPHQL_VALIDATION_FAILED",
        )


def cost_refusal(
    cost: int, max_cost: int, operation: OperationDefinitionNode
) -> GraphQLError | None:
    """The error refusing an operation whose :func:`operation_cost` is over ``max_cost``.

    Cost depends on the variables (``first: $n``), so ``schema.operation``
    checks it for each request, after the (cached) validation and before
    execution, through ``pre_execution_errors``: Strawberry then answers
    without running a resolver. An operation without variables costs the
    same every time, so its cost is computed once per document.
    """
    if cost <= max_cost:
        return None
    return GraphQLError(
        f"The operation would cost {cost}; at most {max_cost} "
        "(DEPOT_GRAPHQL_MAX_COST). Ask for smaller pages (`first`) "
        "or fewer nested lists.",
        operation,
        extensions={"code": "QUERY_TOO_COMPLEX", "cost": cost, "maxCost": max_cost},
    )


def operation_cost(
    schema: GraphQLSchema,
    document: DocumentNode,
    operation: OperationDefinitionNode,
    variables: Mapping[str, Any],
) -> int:
    """An upper bound on the work of running ``operation`` (of a valid document).

    * A field returning an object costs 1 (a row or a loader hop); a scalar or
      enum field costs 0 (read from a row already loaded), except a
      connection's ``totalCount`` (a COUNT query): 1. Introspection fields
      cost 0: they read the schema, bounded by ``MaxIntrospectionDepthRule``.
    * A connection (a ``…Connection`` with a ``first`` argument) multiplies its
      ``edges`` by ``first``, or by its default page when absent; a value
      outside 0..MAX_PAGE is refused by the resolver, so it counts as MAX_PAGE.
    * Another list multiplies its items by its maximum (:data:`LIST_MAXIMA`),
      or, directly on a pipeline step's job, by its share of a bound the
      pipeline's steps hold in all (:data:`STEP_SHARES`).
    * Fragments count where they are spread; on an abstract type, every
      inline fragment counts (an upper bound).
    """
    given = dict(variables)
    for definition in operation.variable_definitions or ():
        name = definition.variable.name.value
        if name not in given and definition.default_value is not None:
            default = definition.default_value
            given[name] = int(default.value) if isinstance(default, IntValueNode) else None
    fragments = {
        d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)
    }
    root = schema.get_root_type(operation.operation)
    if root is None:
        return 0
    return _Costs(schema, fragments, given).selections(operation.selection_set, root, None)


class _Costs:
    def __init__(
        self,
        schema: GraphQLSchema,
        fragments: Mapping[str, FragmentDefinitionNode],
        variables: Mapping[str, Any],
    ) -> None:
        self.schema = schema
        self.fragments = fragments
        self.variables = variables
        self.memo: dict[tuple[str, int | None, bool], int] = {}
        # Whether the selections being counted are a pipeline step's job's own.
        self.at_step_job = False

    def selections(
        self, selections: SelectionSetNode, parent: GraphQLNamedType, page: int | None
    ) -> int:
        total = 0
        for selection in selections.selections:
            if isinstance(selection, FieldNode):
                total += self.field(selection, parent, page)
            elif isinstance(selection, InlineFragmentNode):
                condition = selection.type_condition
                inner = self.schema.get_type(condition.name.value) if condition else parent
                total += self.selections(selection.selection_set, inner or parent, page)
            elif isinstance(selection, FragmentSpreadNode):
                total += self.spread(selection.name.value, page)
        return total

    def spread(self, name: str, page: int | None) -> int:
        # Validation refused cycles and chains deeper than the depth limit.
        key = (name, page, self.at_step_job)
        if key not in self.memo:
            fragment = self.fragments[name]
            condition = self.schema.get_type(fragment.type_condition.name.value)
            assert condition is not None
            self.memo[key] = self.selections(fragment.selection_set, condition, page)
        return self.memo[key]

    def field(self, node: FieldNode, parent: GraphQLNamedType, page: int | None) -> int:
        name = node.name.value
        if name.startswith("__") or not isinstance(
            parent, GraphQLObjectType | GraphQLInterfaceType
        ):
            return 0
        definition = parent.fields.get(name)
        if definition is None:
            return 0
        named = get_named_type(definition.type)
        if is_leaf_type(named):
            return 1 if name == "totalCount" and parent.name.endswith("Connection") else 0
        inner_page = self._page(node, definition) if named.name.endswith("Connection") else None
        # Directly inside a step's job, the lists bounded per pipeline count a share.
        at_step_job = self.at_step_job
        self.at_step_job = parent.name == "PipelineStep" and name == "job"
        try:
            inner = (
                self.selections(node.selection_set, named, inner_page) if node.selection_set else 0
            )
        finally:
            self.at_step_job = at_step_job
        if isinstance(get_nullable_type(definition.type), GraphQLList):
            key = (parent.name, name)
            if name == "edges" and page is not None:
                count = page
            elif at_step_job and key in STEP_SHARES:
                count = STEP_SHARES[key]
            else:
                count = LIST_MAXIMA.get(key, MAX_PAGE)
            return count * (1 + inner)
        return 1 + inner

    def _page(self, node: FieldNode, definition: GraphQLField) -> int | None:
        if "first" not in definition.args:
            return None
        for argument in node.arguments or ():
            if argument.name.value != "first":
                continue
            value: Any = argument.value
            if isinstance(value, VariableNode):
                value = self.variables.get(value.name.value)
            elif isinstance(value, IntValueNode):
                value = int(value.value)
            else:
                value = None  # null: the default page
            if value is None:
                return DEFAULT_PAGE
            if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_PAGE:
                return value
            return MAX_PAGE
        return DEFAULT_PAGE


def bound_errors(errors: list[GraphQLError]) -> list[GraphQLError]:
    """At most :data:`MAX_ERRORS` errors, none with a message over :data:`MAX_MESSAGE_CHARS`."""
    kept = [_short(error) for error in errors[:MAX_ERRORS]]
    if len(errors) > MAX_ERRORS:
        code = (errors[MAX_ERRORS].extensions or {}).get("code", "GRAPHQL_VALIDATION_FAILED")
        kept.append(
            GraphQLError(
                f"{len(errors) - MAX_ERRORS} more errors left out.",
                extensions={"code": code},
            )
        )
    return kept


def _short(error: GraphQLError) -> GraphQLError:
    if len(error.message) <= MAX_MESSAGE_CHARS:
        return error
    return GraphQLError(
        error.message[: MAX_MESSAGE_CHARS - 1] + "…",
        nodes=error.nodes,
        source=error.source,
        positions=error.positions,
        path=error.path,
        original_error=error.original_error,
        extensions=error.extensions,
    )
