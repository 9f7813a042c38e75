"""A job kind is its module: the GraphQL input, the enum value and the stored JSON follow."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from typing import Annotated, Any

import pytest
import strawberry
from graphql import GraphQLEnumType, GraphQLInputObjectType

from schema import build_schema
from schema.ids import encode_id
from schema.job_inputs import input_type, params_of
from workers.context import JobContext
from workers.kind import Kind
from workers.params import Doc, FileId, dump, load
from workers.registry import KINDS


class Shade(enum.StrEnum):
    """How dark the copy is."""

    LIGHT = "light"
    DARK = "dark"


@dataclass(frozen=True)
class Params:
    """Copies of files, shaded."""

    file_id: FileId
    also_ids: list[FileId]
    copies: Annotated[int, Doc("How many of each.")]
    shade: Shade | None = None


async def _run(ctx: JobContext) -> None:
    return None


KIND = Kind(name="shade_copy", params=Params, run=_run)
ShadeCopyInput = input_type(KIND)
seen: list[Any] = []


@strawberry.type
class Query:
    @strawberry.field
    def shade(self, given: ShadeCopyInput) -> bool:  # type: ignore[valid-type]
        seen.append(params_of(KIND, given))
        return True


def test_every_registered_kind_is_a_job_input_field_and_a_job_kind_value() -> None:
    schema = build_schema()._schema
    job_input = schema.get_type("JobInput")
    job_kind = schema.get_type("JobKind")
    assert isinstance(job_input, GraphQLInputObjectType)
    assert isinstance(job_kind, GraphQLEnumType)
    assert list(job_input.fields) == [*KINDS, "pipeline", "template"]
    assert list(job_kind.values) == [name.upper() for name in KINDS] + ["PIPELINE"]
    # Every kind works as a pipeline step, with no more code.
    step_run = schema.get_type("StepRun")
    assert isinstance(step_run, GraphQLInputObjectType)
    assert list(step_run.fields) == list(KINDS)


def test_a_declared_kind_makes_its_input_type() -> None:
    sdl = strawberry.Schema(query=Query).as_str()
    assert '"""Copies of files, shaded."""\ninput ShadeCopyInput {' in sdl
    assert "  fileId: ID!\n  alsoIds: [ID!]!\n" in sdl
    assert '  """How many of each."""\n  copies: Int!\n' in sdl
    assert "  shade: Shade = null\n" in sdl
    assert '"""How dark the copy is."""\nenum Shade {\n  LIGHT\n  DARK\n}' in sdl


def test_file_ids_are_decoded_by_their_declared_type() -> None:
    one, two = uuid.uuid4(), uuid.uuid4()
    seen.clear()
    result = strawberry.Schema(query=Query).execute_sync(
        "query Q($given: ShadeCopyInput!) { shade(given: $given) }",
        {
            "given": {
                "fileId": encode_id("File", one),
                "alsoIds": [encode_id("File", two)],
                "copies": 2,
                "shade": "DARK",
            }
        },
    )
    assert result.errors is None
    assert seen == [Params(FileId(one), [FileId(two)], 2, Shade.DARK)]


def test_parameters_are_stored_as_camel_case_json_and_read_back_typed() -> None:
    one, two = uuid.uuid4(), uuid.uuid4()
    params = Params(FileId(one), [FileId(two)], 3, Shade.LIGHT)
    stored = dump(params)
    assert stored == {"fileId": str(one), "alsoIds": [str(two)], "copies": 3, "shade": "light"}
    assert load(Params, stored) == params
    assert KIND.inputs(stored) == [one, two]
    assert load(Params, {**stored, "shade": None}).shade is None


@pytest.mark.parametrize("name", ["Shade", "shade-copy", "a_name_far_too_long", ""])
def test_a_kind_name_must_fit_the_schema_and_the_column(name: str) -> None:
    with pytest.raises(ValueError, match="lower-case identifier"):
        Kind(name=name, params=Params, run=_run)
