"""Request rules that graphql-core leaves to execution and Strawberry skips.

Each rule is a fixed class, so Strawberry's validation cache still applies:
a document is validated once, whatever the number of requests sending it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    ValidationRule,
)

# Root fields that check a password or a token (each a full Argon2id hash or a
# guess at a secret): aliases must not multiply them within one request.
CREDENTIAL_FIELDS: Final = frozenset(
    {
        "register",
        "login",
        "refreshSession",
        "logout",
        "changePassword",
        "createAccessToken",
        "requestPasswordReset",
        "resetPassword",
        "verifyEmail",
        "changeEmail",
    }
)


class _SingleOperationRule(ValidationRule):
    def enter_document(self, node: DocumentNode, *_args: Any) -> None:
        operations = [d for d in node.definitions if isinstance(d, OperationDefinitionNode)]
        if len(operations) > 1:
            self.report_error(
                GraphQLError(
                    "The document has several operations: name the one to run in `operationName`.",
                    operations,
                )
            )


class _NoSubscriptionOverHttpRule(ValidationRule):
    def enter_operation_definition(self, node: OperationDefinitionNode, *_args: Any) -> None:
        if node.operation is OperationType.SUBSCRIPTION:
            self.report_error(
                GraphQLError(
                    "Subscriptions run over a WebSocket (graphql-transport-ws) at /graphql, "
                    "not over HTTP.",
                    node,
                )
            )


class _CredentialFieldsOnceRule(ValidationRule):
    """Each credential field at most once per operation, fragments and aliases included."""

    def enter_operation_definition(self, node: OperationDefinitionNode, *_args: Any) -> None:
        seen: dict[str, FieldNode] = {}
        for field in self._root_fields(node.selection_set, set()):
            name = field.name.value
            if name not in CREDENTIAL_FIELDS:
                continue
            if name in seen:
                self.report_error(
                    GraphQLError(
                        f"An operation may contain `{name}` only once; send one request each.",
                        [seen[name], field],
                    )
                )
                return
            seen[name] = field

    def _root_fields(self, selections: SelectionSetNode, spread: set[str]) -> Iterator[FieldNode]:
        for selection in selections.selections:
            if isinstance(selection, FieldNode):
                yield selection
            elif isinstance(selection, InlineFragmentNode):
                yield from self._root_fields(selection.selection_set, spread)
            elif isinstance(selection, FragmentSpreadNode):
                name = selection.name.value
                fragment = self.context.get_fragment(name)
                if fragment is not None and name not in spread:
                    yield from self._root_fields(fragment.selection_set, spread | {name})


def request_rules(*, named: bool, websocket: bool) -> tuple[type[ValidationRule], ...]:
    """Rules every request meets before anything runs, for an operation sent with a
    name (``operationName``) or without, over a WebSocket or HTTP.

    - A document with several operations must say which one to run:
      Strawberry would silently run the first; the GraphQL spec requires an
      error (400).
    - Each credential field (:data:`CREDENTIAL_FIELDS`) appears at most once in
      an operation, so ten aliased ``login``s cannot cost ten password hashes
      or make ten sessions.
    - A subscription comes over a WebSocket: over HTTP Strawberry would run
      it as a query, which fails inside the resolver (a 500).

    ``schema.operation`` builds the four combinations once per schema, so the
    rules a request is validated with are one of four fixed tuples: the
    validation cache's key never changes for the same document.
    """
    rules: tuple[type[ValidationRule], ...] = (_CredentialFieldsOnceRule,)
    if not named:
        rules = (_SingleOperationRule, *rules)
    if not websocket:
        rules = (*rules, _NoSubscriptionOverHttpRule)
    return rules
