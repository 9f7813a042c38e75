"""How a job kind declares its parameters, and the checks kinds share.

A kind's parameters are a frozen dataclass; its field types say what each
value is, and everything else follows from them:

    @dataclass(frozen=True)
    class Params:
        '''A zip of several files.'''  # the GraphQL input's description

        file_ids: list[FileId]
        path: Annotated[str, Doc("Where the zip goes.")]

A field is a ``FileId`` (a file of the job's owner: its global id in GraphQL,
decoded before the kind sees it, and one of the job's inputs), ``int``,
``float``, ``str``, ``bool``, an ``Enum`` (its docstring describes it), a
``list`` of one of those, or any of them ``| None`` with a default. The
GraphQL input type (``<Name>Input``, camelCase fields) is made from the
declaration by ``schema/job_inputs.py``; the job row stores the values as JSON
under the same camelCase keys (:func:`dump`), and ``run`` reads them back
typed (:func:`load`). Checks GraphQL cannot express (ranges, lengths, paths)
belong in the kind's ``check``, raising ``BAD_USER_INPUT`` naming the field.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, NewType, TypeVar

from core.errors import BadUserInput
from core.paths import normalize_path

FileId = NewType("FileId", uuid.UUID)
"""A file of the job's owner, by its key; a job reads the files its parameters name."""

P = TypeVar("P")


@dataclass(frozen=True)
class Doc:
    """A parameter's description, shown in the schema: ``Annotated[int, Doc("In pixels.")]``."""

    text: str


@dataclass(frozen=True)
class Param:
    """One declared parameter, as the schema and the stored JSON see it."""

    name: str  # the dataclass field
    key: str  # camelCase: the GraphQL field and the key in the stored JSON
    type: Any  # the field's type, without its ``Annotated`` description
    description: str | None
    default: Any  # ``dataclasses.MISSING`` when the parameter is required


def camel_case(name: str) -> str:
    """``file_ids`` → ``fileIds``."""
    first, *rest = name.split("_")
    return first + "".join(word.capitalize() for word in rest)


def declared(params: type[Any]) -> list[Param]:
    """The parameters of the dataclass ``params``, in declaration order."""
    hints = typing.get_type_hints(params, include_extras=True)
    found = []
    for field in dataclasses.fields(params):
        hint, description = hints[field.name], None
        if typing.get_origin(hint) is Annotated:
            hint, *extras = typing.get_args(hint)
            description = next((extra.text for extra in extras if isinstance(extra, Doc)), None)
        found.append(Param(field.name, camel_case(field.name), hint, description, field.default))
    return found


def optional_of(hint: Any) -> Any | None:
    """``X`` for ``X | None``; None for a type that is not optional."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        others = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(others) == 1:
            return others[0]
    return None


def _plain(value: object) -> object:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def dump(params: object) -> dict[str, Any]:
    """``params`` as the job row stores them: JSON under camelCase keys."""
    return {param.key: _plain(getattr(params, param.name)) for param in declared(type(params))}


def typed(hint: Any, value: Any, *, file_id: Callable[[Any], uuid.UUID]) -> Any:
    """``value`` as the declared type ``hint`` holds it: optionals, lists and enums
    followed, each file id read by ``file_id`` (a stored UUID string, or a
    global id from the API)."""
    if value is None:
        return None
    inner = optional_of(hint)
    if inner is not None:
        return typed(inner, value, file_id=file_id)
    if hint is FileId:
        return FileId(file_id(value))
    if typing.get_origin(hint) is list:
        [item] = typing.get_args(hint)
        return [typed(item, each, file_id=file_id) for each in value]
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return hint(value)
    return value


def load(params: type[P], stored: dict[str, Any]) -> P:
    """The stored JSON of a job back as its kind's ``params`` class."""
    return params(
        **{
            param.name: typed(param.type, stored.get(param.key), file_id=uuid.UUID)
            for param in declared(params)
            if param.key in stored
        }
    )


def _files(hint: Any, value: Any) -> list[uuid.UUID]:
    inner = optional_of(hint)
    if value is None or inner is not None:
        return [] if value is None else _files(inner, value)
    if hint is FileId:
        return [uuid.UUID(str(value))]
    if typing.get_origin(hint) is list:
        [item] = typing.get_args(hint)
        return [found for each in value for found in _files(item, each)]
    return []


def input_files(params: type[Any], stored: dict[str, Any]) -> list[uuid.UUID]:
    """The files a job with these stored parameters reads: every ``FileId``, in order."""
    return [
        file_id
        for param in declared(params)
        for file_id in _files(param.type, stored.get(param.key))
    ]


# -- checks the kinds share ------------------------------------------------------


def distinct_files(ids: Sequence[uuid.UUID], field: str, *, most: int) -> None:
    """``BAD_USER_INPUT`` unless ``ids`` lists 1 to ``most`` files, none twice."""
    if not ids:
        raise BadUserInput(f"{field} must list at least one file.", field=field)
    if len(ids) > most:
        raise BadUserInput(f"{field} may list at most {most} files.", field=field)
    if len(set(ids)) != len(ids):
        raise BadUserInput(f"{field} lists a file twice.", field=field)


def path(value: str, field: str) -> str:
    """A file or folder path, normalised (``BAD_USER_INPUT`` naming ``field`` if invalid)."""
    return normalize_path(value, field=field)
