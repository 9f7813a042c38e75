"""Custom scalars: Python types, and how the schema serialises them."""

from __future__ import annotations

from typing import NewType

import strawberry
from strawberry.types.scalar import ScalarDefinition

MAX_SAFE_INTEGER = 2**53 - 1

BigInt = NewType("BigInt", int)


def _parse_big_int(value: object) -> BigInt:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError("BigInt takes an integer")
    number = int(value)
    if abs(number) > MAX_SAFE_INTEGER:
        raise ValueError("BigInt takes integers up to 2^53 - 1")
    return BigInt(number)


# Passed to the schema as StrawberryConfig(scalar_map=SCALARS).
SCALARS: dict[object, ScalarDefinition] = {
    BigInt: strawberry.scalar(
        name="BigInt",
        serialize=int,
        parse_value=_parse_big_int,
        description="An integer up to 2^53 - 1 (byte counts exceed GraphQL's 32-bit Int).",
    ),
}
