"""``JobInput`` and every kind's input type, made from the kinds' declared parameters.

``JobInput`` (``@oneOf``) has a field per kind in ``workers/registry.py``,
named after it and typed ``<Name>Input``: the kind's ``Params`` dataclass as
a GraphQL input, with its docstring, its ``Doc`` descriptions and camelCase
field names (:mod:`workers.params`). :func:`job_request` turns what a client
sent back into the kind and its ``Params``: what a value means follows from
its declared type, so a ``FileId`` is decoded from a ``File``'s global id
whatever the field is called.

A pipeline's steps take the same parameters without the files
(``<Name>StepInput``, one ``StepRun`` field per kind that has one file
parameter, which is every kind so far); :func:`step_requests` hands them to
:func:`workers.pipeline.check_steps`.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import typing
import uuid
from typing import TYPE_CHECKING, Any

import strawberry

from core.errors import BadUserInput
from core.pipelines import INPUT
from schema.ids import decode_id_of
from workers.kind import Kind
from workers.params import FileId, declared, distinct_files, optional_of, typed
from workers.pipeline import StepRequest, file_param
from workers.registry import KINDS

_PLAIN: typing.Final = (int, float, str, bool)
# The files a pipeline may start on, as an archive may zip.
MAX_PIPELINE_FILES: typing.Final = 1000
_ENUMS: dict[type[enum.Enum], Any] = {}


def graphql_enum(python: type[enum.Enum]) -> Any:
    """The GraphQL enum over ``python`` (made once, described by its own docstring)."""
    if python not in _ENUMS:
        _ENUMS[python] = strawberry.enum(python, description=vars(python).get("__doc__"))
    return _ENUMS[python]


def _graphql_type(hint: Any) -> Any:
    inner = optional_of(hint)
    if inner is not None:
        return _graphql_type(inner) | None
    if hint is FileId:
        return strawberry.ID
    if typing.get_origin(hint) is list:
        [item] = typing.get_args(hint)
        return list[_graphql_type(item)]  # type: ignore[misc]
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return graphql_enum(hint)
    if hint in _PLAIN:
        return hint
    raise TypeError(
        f"A job parameter cannot be a {hint!r}; workers/params.py lists the types it can be."
    )


def type_name(kind: Kind) -> str:
    """``thumbnails`` → ``ThumbnailsInput``."""
    return "".join(word.capitalize() for word in kind.name.split("_")) + "Input"


def input_type(kind: Kind) -> type:
    """The GraphQL input type of ``kind``'s ``Params`` (``<Name>Input``)."""
    annotations: dict[str, Any] = {}
    namespace: dict[str, Any] = {"__annotations__": annotations, "__module__": __name__}
    for param in declared(kind.params):
        annotations[param.name] = _graphql_type(param.type)
        default = {} if param.default is dataclasses.MISSING else {"default": param.default}
        namespace[param.name] = strawberry.field(
            name=param.key, description=param.description, **default
        )
    made = type(type_name(kind), (), namespace)
    return strawberry.input(made, description=inspect.getdoc(kind.params))


def step_type(kind: Kind) -> type:
    """``kind``'s parameters as a pipeline step takes them (``<Name>StepInput``): without
    the files, which the step's ``use`` supplies, and with ``accept``."""
    files = file_param(kind)
    annotations: dict[str, Any] = {}
    namespace: dict[str, Any] = {"__annotations__": annotations, "__module__": __name__}
    for param in declared(kind.params):
        if files is not None and param.name == files[0]:
            continue
        annotations[param.name] = _graphql_type(param.type)
        default = {} if param.default is dataclasses.MISSING else {"default": param.default}
        namespace[param.name] = strawberry.field(
            name=param.key, description=param.description, **default
        )
    annotations["accept"] = str | None
    namespace["accept"] = strawberry.field(
        default=None,
        description="Read only the files of `use` whose content type matches this pattern "
        "(`image/*`). Default: all of them.",
    )
    made = type(type_name(kind).removesuffix("Input") + "StepInput", (), namespace)
    return strawberry.input(made, description=inspect.getdoc(kind.params))


def _one_of(name: str, fields: dict[str, Any], description: str) -> type:
    namespace: dict[str, Any] = {
        "__annotations__": {key: made | None for key, made in fields.items()},
        "__module__": __name__,
        **dict.fromkeys(fields, strawberry.UNSET),
    }
    return strawberry.input(type(name, (), namespace), one_of=True, description=description)


_STEP_KINDS: typing.Final = {name: kind for name, kind in KINDS.items() if file_param(kind)}


if TYPE_CHECKING:

    class StepRun:
        """Exactly one kind of job for a step: a field per kind, each its ``<Name>StepInput``."""

else:
    StepRun = _one_of(
        "StepRun",
        {name: step_type(kind) for name, kind in _STEP_KINDS.items()},
        "What a step runs: exactly one kind of job, with its parameters but its files.",
    )


@strawberry.input(description="One named step of a pipeline.")
class StepInput:
    name: str = strawberry.field(description="Unique in its pipeline: letters, digits, _ and -.")
    run: StepRun
    use: list[str] = strawberry.field(
        default_factory=lambda: [INPUT],
        description="The steps whose files this one reads; `:input` is the pipeline's files.",
    )


@strawberry.input(description="Steps that feed each other, run as one job of kind `PIPELINE`.")
class PipelineInput:
    file_ids: list[strawberry.ID] = strawberry.field(description="The files steps call `:input`.")
    steps: list[StepInput]


@strawberry.input(description="A saved pipeline template, started on files.")
class TemplateJobInput:
    template_id: strawberry.ID
    file_ids: list[strawberry.ID]


def _job_input() -> type:
    inputs: dict[str, Any] = {name: input_type(kind) for name, kind in KINDS.items()}
    return _one_of(
        "JobInput",
        {**inputs, "pipeline": PipelineInput, "template": TemplateJobInput},
        "Exactly one kind of job, with its parameters; or a pipeline of them, "
        "or a saved template's.",
    )


if TYPE_CHECKING:

    class JobInput:
        """Exactly one kind of job: a field per kind, each its ``<Name>Input``;
        or ``pipeline``, or ``template``."""

        pipeline: PipelineInput | None
        template: TemplateJobInput | None

else:
    JobInput = _job_input()


def given(value: object) -> bool:
    """Whether a ``@oneOf`` input's field was given (left out, it is ``UNSET``)."""
    return value is not None and value is not strawberry.UNSET


def step_requests(steps: list[StepInput]) -> list[StepRequest]:
    """The steps a client gave, each with its kind and typed parameters."""
    found = []
    for step in steps:
        for name, kind in _STEP_KINDS.items():
            given = getattr(step.run, name, strawberry.UNSET)
            if given is None or given is strawberry.UNSET:
                continue
            files = file_param(kind)
            values = {
                param.name: typed(param.type, getattr(given, param.name), file_id=_file_key)
                for param in declared(kind.params)
                if files is None or param.name != files[0]
            }
            found.append(StepRequest(step.name, kind, values, list(step.use), given.accept))
            break
        else:
            raise BadUserInput("Give exactly one kind of job.", field=f"steps.{step.name}.run")
    return found


def file_keys(ids: list[strawberry.ID], field: str) -> list[uuid.UUID]:
    """Files' global ids decoded; at least one, none twice."""
    keys = [decode_id_of("File", each, field=field) for each in ids]
    distinct_files(keys, field, most=MAX_PIPELINE_FILES)
    return keys


def _file_key(global_id: Any) -> uuid.UUID:
    return decode_id_of("File", global_id)


def params_of(kind: Kind, given: object) -> Any:
    """``kind``'s ``Params`` from its input object as Strawberry hands it over."""
    values = {
        param.name: typed(param.type, getattr(given, param.name), file_id=_file_key)
        for param in declared(kind.params)
    }
    return kind.params(**values)


def job_request(input: JobInput) -> tuple[Kind, Any]:
    """The kind of job asked for and its parameters (its ``Params``, ids decoded)."""
    for name, kind in KINDS.items():
        given = getattr(input, name, strawberry.UNSET)
        if given is not None and given is not strawberry.UNSET:
            return kind, params_of(kind, given)
    raise BadUserInput("Give exactly one kind of job.", field="input")
