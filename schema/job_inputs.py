"""``JobInput`` and every kind's input type, made from the kinds' declared parameters.

``JobInput`` (``@oneOf``) has a field per kind in ``workers/registry.py``,
named after it and typed ``<Name>Input``: the kind's ``Params`` dataclass as
a GraphQL input, with its docstring, its ``Doc`` descriptions and camelCase
field names (:mod:`workers.params`). :func:`job_request` turns what a client
sent back into the kind and its ``Params``: what a value means follows from
its declared type, so a ``FileId`` is decoded from a ``File``'s global id
whatever the field is called.
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
from schema.ids import decode_id_of
from workers.kind import Kind
from workers.params import FileId, declared, optional_of, typed
from workers.registry import KINDS

_PLAIN: typing.Final = (int, float, str, bool)
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


def _job_input() -> type:
    inputs = {name: input_type(kind) for name, kind in KINDS.items()}
    namespace: dict[str, Any] = {
        "__annotations__": {name: made | None for name, made in inputs.items()},
        "__module__": __name__,
        **dict.fromkeys(inputs, strawberry.UNSET),
    }
    made = type("JobInput", (), namespace)
    return strawberry.input(
        made, one_of=True, description="Exactly one kind of job, with its parameters."
    )


if TYPE_CHECKING:

    class JobInput:
        """Exactly one kind of job: a field per kind, each its ``<Name>Input``."""

else:
    JobInput = _job_input()


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
