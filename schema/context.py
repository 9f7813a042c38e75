"""The per-request GraphQL context: everything a resolver may use."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeAlias

import strawberry
from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket

from core.db import SessionMaker
from core.models import User
from core.settings import Settings


@dataclass
class Context:
    """Built once per HTTP request, or once per WebSocket connection."""

    request: Request | WebSocket
    response: Response | WebSocket
    settings: Settings
    sessionmaker: SessionMaker
    request_id: str
    user: User | None = None
    # Set by the graphql-transport-ws handler from the `connection_init` payload.
    connection_params: dict[str, Any] | None = field(default=None)


Info: TypeAlias = strawberry.Info[Context, None]
