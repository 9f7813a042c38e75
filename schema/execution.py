"""graphql-core's executor with a short path for plain fields: what a page of nodes costs.

graphql-core executes every field the same way: the field's definition looked
up, its resolver wrapped by the middleware manager, a ``GraphQLResolveInfo``
built, the resolver called, and the value completed through a chain of type
checks (``complete_value`` for the non-null wrapper, again for the type,
``complete_leaf_value``, the scalar's coercion), each result asked whether it
is awaitable on the way back. That is some 25 Python calls for a field that
reads one attribute, and a page of 50 files has 300 of them.

:class:`DepotExecutor` decides once per field of the operation (per parent
type and field group, as graphql-core memoizes sub-selections) whether the
field is *plain*: its resolver is ``schema``'s one-``getattr`` reader, it
takes no arguments, no middleware wraps it, and its type is a leaf (scalar or
enum) or an object type, possibly non-null; or, for an object type, its
resolver is ``schema``'s direct call of a bare ``(self, info)`` method
(``File.owner``). A plain field is then read and completed directly:

* a leaf whose value is present and coerces to a value is that value;
  a null one of a nullable field is null;
* an object is asked ``is_type_of`` (with the info graphql-core would give)
  and its sub-selection executed as ``complete_object_value`` would, its
  errors handled as ``execute_field`` handles them.

Anything else — a null for a non-null field, a coercion that fails or gives
nothing, an awaitable, a failing read, a wrong object — goes the general way,
which reads the attribute again and raises, nulls and locates exactly as
before; a method, which must run once, has what it returned or raised
completed or handled by graphql-core's own ``complete_value`` and
``handle_field_error``. So the answers, the errors and their paths are graphql-core's; only
the calls for the common case are gone.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, cast

from graphql import (
    GraphQLBoolean,
    GraphQLField,
    GraphQLID,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLOutputType,
    GraphQLScalarType,
    GraphQLString,
    is_leaf_type,
    is_object_type,
)
from graphql.execution.collect_fields import FieldDetailsList
from graphql.execution.executor import to_nodes
from graphql.pyutils import Path, Undefined
from graphql.pyutils.gather_with_cancel import gather_with_cancel
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

# The attribute ``schema``'s plain-field reader carries: the Python name it reads.
READS: Final = "_depot_reads"
# The attribute ``schema``'s direct caller of a ``(self, info)`` resolver carries.
CALLS: Final = "_depot_calls"

# Values that are never awaitable, by exact type (as Strawberry's is_awaitable checks).
_PLAIN_VALUES: Final = frozenset({str, int, float, bool})


class _Leaf:
    """A plain leaf field: the attribute to read and how its type coerces a value.

    ``same`` is the one Python type the scalar gives back as it is (``str`` for
    ``String`` and ``ID``, ``bool`` for ``Boolean``), checked by exact type so
    that a subclass still goes through the coercion; None for other scalars.
    """

    __slots__ = ("attribute", "coerce", "nullable", "same")

    def __init__(
        self, attribute: str, coerce: Callable[[Any], Any], nullable: bool, same: type | None
    ) -> None:
        self.attribute = attribute
        self.coerce = coerce
        self.nullable = nullable
        self.same = same


# Scalars whose coercion returns a value of exactly this type unchanged
# (graphql-core's serialize_string, serialize_id and serialize_boolean).
_UNCHANGED: Final[Mapping[GraphQLScalarType, type]] = {
    GraphQLString: str,
    GraphQLID: str,
    GraphQLBoolean: bool,
}


class _Object:
    """A plain object field: what ``execute_field`` and ``complete_object_value`` use.

    ``attribute`` is None for a field resolved by a ``(self, info)`` method.
    """

    __slots__ = ("attribute", "field_def", "object_type", "parent_type")

    def __init__(
        self,
        attribute: str | None,
        field_def: GraphQLField,
        object_type: GraphQLObjectType,
        parent_type: GraphQLObjectType,
    ) -> None:
        self.attribute = attribute
        self.field_def = field_def
        self.object_type = object_type
        self.parent_type = parent_type


def asks_no_info(object_type: GraphQLObjectType) -> bool:
    """Whether ``object_type``'s ``is_type_of`` is Strawberry's own, which ignores its info.

    Strawberry gives every type with an interface (``Node``'s ``File`` and
    ``User``) a closure of its converter that reads only the value
    (``tests/test_strawberry_internals.py`` pins it); a ``GraphQLResolveInfo``
    built for it alone is some five calls per object.
    """
    check = object_type.is_type_of
    return (
        getattr(check, "__module__", None) == _STRAWBERRYS_IS_TYPE_OF
        and getattr(check, "__name__", None) == "is_type_of"
    )


_STRAWBERRYS_IS_TYPE_OF: Final = "strawberry.schema.schema_converter"


# What a short path returns to say "take the general one".
_GENERAL: Final = object()


class DepotExecutor(StrawberryGraphQLCoreExecutionContext):
    """Strawberry's executor, with plain fields read and completed directly (see the module)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # By id of a grouped field set (graphql-core memoizes one per parent type and
        # selection, so a page's nodes share it): the set and its parent type are
        # kept in the entry, so the id is not taken by another while this runs.
        self._plans: dict[int, tuple[object, GraphQLObjectType, list[_Leaf | _Object | None]]] = {}
        # Types whose values were found not awaitable (and not exceptions) once.
        self._settled: set[type] = set(_PLAIN_VALUES)
        # By object type: whether its is_type_of may be called without an info.
        self._info_free: dict[GraphQLObjectType, bool] = {}
        # By id of a list's item type (kept in the entry): the object type its items
        # complete to, non-null or not, or None for any other item type.
        self._item_objects: dict[int, tuple[GraphQLOutputType, GraphQLObjectType | None]] = {}
        manager = self.middleware_manager
        self._wrapped = manager is not None and bool(manager._middleware_resolvers)

    def _plan(
        self, parent_type: GraphQLObjectType, field_details_list: FieldDetailsList
    ) -> _Leaf | _Object | None:
        node = field_details_list[0].node
        field_def = self.schema.get_field(parent_type, node.name.value)
        if field_def is None or self._wrapped or field_def.args or node.arguments:
            return None
        attribute = getattr(field_def.resolve, READS, None)
        calls = getattr(field_def.resolve, CALLS, False) is True
        if not isinstance(attribute, str) and not calls:
            return None
        field_type = field_def.type
        non_null = isinstance(field_type, GraphQLNonNull)
        named = field_type.of_type if isinstance(field_type, GraphQLNonNull) else field_type
        if is_leaf_type(named) and isinstance(attribute, str):
            same = _UNCHANGED.get(named) if isinstance(named, GraphQLScalarType) else None
            return _Leaf(attribute, named.coerce_output_value, not non_null, same)
        if is_object_type(named):
            return _Object(attribute, field_def, named, parent_type)
        return None

    def _no_info(self, object_type: GraphQLObjectType) -> bool:
        free = self._info_free.get(object_type)
        if free is None:
            free = self._info_free[object_type] = asks_no_info(object_type)
        return free

    def _settles(self, value: Any) -> bool:
        """Whether ``value`` is a plain value: neither awaitable nor an exception."""
        kind = type(value)
        if kind in self._settled:
            return True
        if isinstance(value, Exception) or self.is_awaitable(value):
            return False
        self._settled.add(kind)
        return True

    def _leaf(self, plan: _Leaf, value: Any) -> Any:
        """A plain leaf's completed ``value``, or _GENERAL."""
        if value is None:
            return None if plan.nullable else _GENERAL
        if not self._settles(value):
            return _GENERAL
        try:
            coerced = plan.coerce(value)
        except Exception:  # noqa: BLE001 - as above
            return _GENERAL
        return _GENERAL if coerced is None or coerced is Undefined else coerced

    def _object(
        self,
        plan: _Object,
        source: Any,
        field_details_list: FieldDetailsList,
        path: Path,
        position_context: Any,
    ) -> Any:
        info = None
        field_type = plan.field_def.type
        if plan.attribute is None:
            # A resolver runs once: from here on every outcome is this field's answer.
            info = self._info(plan, field_details_list, path)
            try:
                value = plan.field_def.resolve(source, info)  # type: ignore[misc]
            except Exception as raw_error:  # noqa: BLE001 - handled as graphql-core does
                self.handle_field_error(raw_error, field_type, field_details_list, path)
                return None
            if value is None or (type(value) not in self._settled and not self._settles(value)):
                return self._completed(
                    plan, field_details_list, info, path, value, position_context
                )
        else:
            try:
                value = getattr(source, plan.attribute)
            except Exception:  # noqa: BLE001 - the general path raises it again, located
                return _GENERAL
            if value is None or (type(value) not in self._settled and not self._settles(value)):
                return _GENERAL
        object_type = plan.object_type
        if object_type.is_type_of is not None:
            if info is None and not self._no_info(object_type):
                info = self._info(plan, field_details_list, path)
            # Only a plain True: False (an error) and an awaitable go the general way.
            # (info is None only for Strawberry's own check, which does not read it.)
            if object_type.is_type_of(value, cast(Any, info)) is not True:
                if plan.attribute is not None:
                    return _GENERAL
                return self._completed(
                    plan, field_details_list, info, path, value, position_context
                )
        try:
            completed = self.collect_and_execute_subfields(
                object_type, field_details_list, path, value, position_context
            )
        except Exception as raw_error:  # noqa: BLE001 - handled as graphql-core does
            # As execute_field: null for a nullable field, raised on for a non-null one.
            self.handle_field_error(raw_error, field_type, field_details_list, path)
            return None
        # A sub-selection's answer is a plain dict unless a field awaits.
        if type(completed) is not dict and self.is_awaitable(completed):
            return _completed_later(self, completed, field_type, field_details_list, path)
        return completed

    def _info(self, plan: _Object, field_details_list: FieldDetailsList, path: Path) -> Any:
        return self.build_resolve_info(
            plan.field_def, to_nodes(field_details_list), plan.parent_type, path
        )

    def _completed(
        self,
        plan: _Object,
        field_details_list: FieldDetailsList,
        info: Any,
        path: Path,
        value: Any,
        position_context: Any,
    ) -> Any:
        """A resolved value completed as ``execute_field`` completes it, by graphql-core."""
        field_type = plan.field_def.type
        try:
            if self.is_awaitable(value):
                return self.complete_awaitable_value(
                    field_type, field_details_list, info, path, value, position_context
                )
            completed = self.complete_value(
                field_type, field_details_list, info, path, value, position_context
            )
        except Exception as raw_error:  # noqa: BLE001 - handled as graphql-core does
            self.handle_field_error(raw_error, field_type, field_details_list, path)
            return None
        # A sub-selection's answer is a plain dict unless a field awaits.
        if type(completed) is not dict and self.is_awaitable(completed):
            return _completed_later(self, completed, field_type, field_details_list, path)
        return completed

    def complete_list_item_value(
        self,
        item: Any,
        complete_results: list[Any],
        item_type: GraphQLOutputType,
        field_details_list: FieldDetailsList,
        info: Any,
        item_path: Path,
        position_context: Any,
    ) -> bool:
        """graphql-core's, with an object item its type's check (Strawberry's) accepts
        completed directly: not through ``complete_value`` twice (the non-null
        wrapper, then the type) and ``complete_object_value``, per edge of a page.
        A null, an awaitable, a refused or unusual item goes graphql-core's way."""
        object_type = self._item_object(item_type)
        if (
            object_type is None
            or item is None
            or (type(item) not in self._settled and not self._settles(item))
            or (
                object_type.is_type_of is not None
                and not (
                    self._no_info(object_type)
                    and object_type.is_type_of(item, cast(Any, None)) is True
                )
            )
        ):
            return super().complete_list_item_value(
                item,
                complete_results,
                item_type,
                field_details_list,
                info,
                item_path,
                position_context,
            )
        try:
            completed = self.collect_and_execute_subfields(
                object_type, field_details_list, item_path, item, position_context
            )
        except Exception as raw_error:  # noqa: BLE001 - handled as graphql-core does
            self.handle_field_error(raw_error, item_type, field_details_list, item_path)
            complete_results.append(None)
            return False
        if type(completed) is not dict and self.is_awaitable(completed):
            complete_results.append(
                _completed_later(self, completed, item_type, field_details_list, item_path)
            )
            return True
        complete_results.append(completed)
        return False

    def _item_object(self, item_type: GraphQLOutputType) -> GraphQLObjectType | None:
        entry = self._item_objects.get(id(item_type))
        if entry is not None and entry[0] is item_type:
            return entry[1]
        named = item_type.of_type if isinstance(item_type, GraphQLNonNull) else item_type
        object_type = named if is_object_type(named) else None
        self._item_objects[id(item_type)] = (item_type, object_type)
        return object_type

    def execute_fields(
        self,
        parent_type: GraphQLObjectType,
        source_value: Any,
        path: Path | None,
        grouped_field_set: Mapping[str, FieldDetailsList],
        position_context: Any,
    ) -> Any:
        """graphql-core's ``execute_fields``, with plain fields taken the short way."""
        results: dict[str, Any] = {}
        is_awaitable = self.is_awaitable
        awaitable_fields: list[str] = []
        entry = self._plans.get(id(grouped_field_set))
        if entry is not None and entry[0] is grouped_field_set and entry[1] is parent_type:
            plans = entry[2]
        else:
            plans = [self._plan(parent_type, group) for group in grouped_field_set.values()]
            self._plans[id(grouped_field_set)] = (grouped_field_set, parent_type, plans)
        try:
            for (response_name, field_details_list), plan in zip(
                grouped_field_set.items(), plans, strict=True
            ):
                if type(plan) is _Leaf:
                    try:
                        value = getattr(source_value, plan.attribute)
                    except Exception:  # noqa: BLE001 - the general path raises it again, located
                        value = _GENERAL
                    else:
                        if type(value) is not plan.same:
                            value = self._leaf(plan, value)
                    if value is not _GENERAL:
                        results[response_name] = value
                        continue
                field_path = Path(path, response_name, parent_type.name)
                if type(plan) is _Object:
                    result = self._object(
                        plan, source_value, field_details_list, field_path, position_context
                    )
                else:
                    result = _GENERAL
                if result is _GENERAL:
                    result = self.execute_field(
                        parent_type, source_value, field_details_list, field_path, position_context
                    )
                if result is not Undefined:
                    results[response_name] = result
                    if type(result) is not dict and is_awaitable(result):
                        awaitable_fields.append(response_name)
        except Exception:
            if awaitable_fields:
                # As graphql-core: settle what other fields started, which may also fail.
                self.settle_in_background([results[field] for field in awaitable_fields])
            raise
        if not awaitable_fields:
            return results
        return _gathered(results, awaitable_fields)


async def _gathered(results: dict[str, Any], awaitable_fields: list[str]) -> dict[str, Any]:
    """``results`` with its awaitable fields awaited, as graphql-core's ``get_results``."""
    if len(awaitable_fields) == 1:
        # One field: no need to run it beside others.
        field = awaitable_fields[0]
        results[field] = await results[field]
    else:
        awaited = await gather_with_cancel(*(results[field] for field in awaitable_fields))
        results.update(zip(awaitable_fields, awaited, strict=True))
    return results


async def _completed_later(
    executor: DepotExecutor,
    completed: Awaitable[Any],
    field_type: GraphQLOutputType,
    field_details_list: FieldDetailsList,
    path: Path,
) -> Any:
    """An object's sub-selection awaited, its error handled as ``execute_field`` does."""
    try:
        return await completed
    except Exception as raw_error:  # noqa: BLE001 - handled as graphql-core does
        executor.handle_field_error(raw_error, field_type, field_details_list, path)
        return None
