"""The Relay ``Node`` interface."""

from __future__ import annotations

import uuid

import strawberry


@strawberry.interface
class Node:
    """An object with an opaque global id that ``node(id:)`` resolves.

    ``key`` is the row's primary key, kept beside ``id`` so resolvers never
    decode their own node's global id again.
    """

    id: strawberry.ID
    key: strawberry.Private[uuid.UUID]
