"""The Relay ``Node`` interface."""

from __future__ import annotations

import strawberry


@strawberry.interface
class Node:
    """An object with an opaque global id that ``node(id:)`` resolves."""

    id: strawberry.ID
