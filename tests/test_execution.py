"""schema.execution: plain fields taken the short way answer exactly as graphql-core's executor.

Each case runs one document twice on a tiny schema built inline, with
Depot's plain-field readers installed: once through Strawberry's stock
executor, once through :class:`schema.execution.DepotExecutor`. The two
answers — data, errors, their messages, paths and locations — must be the
same, for the common case and for every way a plain field can go wrong.
"""

from __future__ import annotations

import asyncio
from enum import Enum
from typing import Any

import pytest
import strawberry
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

from schema import _read_plain_fields_directly
from schema.execution import DepotExecutor

pytestmark = pytest.mark.anyio


@strawberry.enum
class Colour(Enum):
    RED = "red"
    BLUE = "blue"


@strawberry.interface
class Named:
    name: str


@strawberry.type
class Leaf(Named):
    """With an interface, so graphql-core asks its ``is_type_of`` of every value."""

    size: int
    colour: Colour
    maybe: str | None = None


@strawberry.type
class Item:
    title: str
    leaf: Leaf
    other: Leaf | None = None

    @strawberry.field
    def owner(self, info: strawberry.Info) -> Leaf:
        assert info.field_name == "owner"
        # A resolver that returns null for a non-null field, raises, or returns a wrong type.
        if self.title == "c":
            return None  # type: ignore[return-value]
        if self.title == "g":
            raise ValueError("no owner here")
        if self.title == "h":
            return "not a leaf"  # type: ignore[return-value]
        return Leaf(name=f"owner of {self.title}", size=1, colour=Colour.BLUE)

    @strawberry.field
    async def parent(self) -> Leaf | None:
        await asyncio.sleep(0)
        return None if self.title == "d" else self.leaf

    @strawberry.field
    async def later(self) -> str:
        await asyncio.sleep(0)
        return self.title.upper()


class Broken:
    """Reads that fail: a property that raises, for any field of ``Leaf``."""

    @property
    def name(self) -> str:
        raise ValueError("no name here")


def _items() -> list[Any]:
    good = Item(title="a", leaf=Leaf(name="x", size=2, colour=Colour.RED))
    items: list[Any] = [good]
    # A null in non-null leaves and objects, a wrong type, a value that does not coerce.
    items.append(Item(title=None, leaf=Leaf(name="y", size=3, colour=Colour.RED)))  # type: ignore[arg-type]
    items.append(Item(title="c", leaf=None))  # type: ignore[arg-type]
    items.append(Item(title="d", leaf=Leaf(name="z", size="many", colour=Colour.BLUE)))  # type: ignore[arg-type]
    items.append(Item(title="e", leaf=Leaf(name="w", size=2**40, colour=Colour.BLUE)))
    items.append(Item(title="f", leaf=Leaf(name="v", size=1, colour="green")))  # type: ignore[arg-type]
    items.append(Item(title="g", leaf=Broken()))  # type: ignore[arg-type]
    items.append(Item(title="h", leaf="not a leaf"))  # type: ignore[arg-type]
    items.append(Item(title=ValueError("an exception as a value"), leaf=good.leaf))  # type: ignore[arg-type]
    items.append(Item(title="i", leaf=good.leaf, other=Leaf(name=None, size=1, colour=Colour.RED)))  # type: ignore[arg-type]
    return items


@strawberry.type
class Query:
    @strawberry.field
    def items(self) -> list[Item | None]:
        # Item has no is_type_of: a null and a wrong value among the items.
        return [*_items(), None, "not an item"]  # type: ignore[list-item]

    @strawberry.field
    def leaves(self) -> list[Leaf | None]:
        # Leaf has Strawberry's is_type_of: the same, and a read that fails.
        good = Leaf(name="x", size=2, colour=Colour.RED)
        return [
            good,
            None,
            "not a leaf",
            Broken(),
            Leaf(name=None, size=1, colour=Colour.RED),
            good,
        ]  # type: ignore[list-item, arg-type]

    @strawberry.field
    def strict_leaves(self, wrong: bool) -> list[Leaf]:
        good = Leaf(name="x", size=2, colour=Colour.RED)
        return [good, None if wrong else good]  # type: ignore[list-item]

    @strawberry.field
    def strict(self) -> list[Item]:
        return _items()[:2]

    @strawberry.field
    def one(self) -> Item:
        return _items()[0]


def _schema(executor: type[StrawberryGraphQLCoreExecutionContext]) -> strawberry.Schema:
    schema = strawberry.Schema(query=Query, execution_context_class=executor)
    _read_plain_fields_directly(schema)
    return schema


DOCUMENTS = [
    "{ one { title leaf { name size colour maybe } owner { name } later } }",
    "{ items { title leaf { name size colour maybe } other { name size } owner { name } } }",
    "{ items { owner { name size } parent { name } } }",
    "{ items { ... on Item { t: title title leaf { __typename name } } } }",
    "{ strict { title leaf { name } } }",
    "{ leaves { name size colour } }",
    "{ leaves { __typename ... on Leaf { name } } }",
    "{ strictLeaves(wrong: true) { name } }",
    "query Q($skip: Boolean!) { items { title @skip(if: $skip) leaf { size } } }",
]


def _answer(result: Any) -> dict[str, Any]:
    return {
        "data": result.data,
        "errors": [error.formatted for error in result.errors or []],
    }


@pytest.mark.parametrize("document", DOCUMENTS)
async def test_answers_and_errors_are_graphql_cores(document: str) -> None:
    stock = _schema(StrawberryGraphQLCoreExecutionContext)
    ours = _schema(DepotExecutor)
    variables = {"skip": False}
    expected = _answer(await stock.execute(document, variable_values=variables))
    got = _answer(await ours.execute(document, variable_values=variables))
    assert got == expected
    # The cases above do go wrong: this compares errors, not two clean answers.
    if "items" in document or "strict" in document or "leaves" in document:
        assert expected["errors"]


async def test_the_short_path_is_taken() -> None:
    """Plain fields and bare methods never reach execute_field: not only a fallback."""
    executed: list[str] = []

    class Counting(DepotExecutor):
        def execute_field(self, parent_type: Any, source: Any, fields: Any, *rest: Any) -> Any:
            executed.append(f"{parent_type.name}.{fields[0].node.name.value}")
            return super().execute_field(parent_type, source, fields, *rest)

    result = await _schema(Counting).execute(
        "{ one { title leaf { name size colour } owner { name } } }"
    )
    assert result.errors is None
    assert result.data == {
        "one": {
            "title": "a",
            "leaf": {"name": "x", "size": 2, "colour": "RED"},
            "owner": {"name": "owner of a"},
        }
    }
    # Every field here is plain or a bare method: none takes the general way.
    assert executed == []


async def test_list_items_of_object_types_skip_complete_value() -> None:
    """An object item Strawberry's check accepts is completed without complete_value."""
    completed: list[str] = []

    class Counting(DepotExecutor):
        def complete_value(self, return_type: Any, *rest: Any) -> Any:
            completed.append(str(return_type))
            return super().complete_value(return_type, *rest)

    result = await _schema(Counting).execute("{ strictLeaves(wrong: false) { name size } }")
    assert result.errors is None
    assert result.data == {"strictLeaves": [{"name": "x", "size": 2}] * 2}
    # The list itself, not its items.
    assert completed == ["[Leaf!]!", "[Leaf!]"]
