"""Request rules that graphql-core leaves to execution and Strawberry skips."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from graphql import DocumentNode, GraphQLError, OperationDefinitionNode, ValidationRule
from strawberry.extensions import SchemaExtension


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


class RequireOperationName(SchemaExtension):
    """A document with several operations must say which one to run.

    Strawberry would silently run the first; the GraphQL spec requires an
    error. Added as a validation rule, so the request is refused with 400; the
    rule is a fixed class, so the validation cache still applies.
    """

    def on_operation(self) -> Iterator[None]:
        context = self.execution_context
        if context.operation_name is None:
            context.validation_rules = (*context.validation_rules, _SingleOperationRule)
        yield
