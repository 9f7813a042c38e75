"""The per-request GraphQL context: everything a resolver may use."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import strawberry
from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket

from core.auth import Principal
from core.db import SessionMaker, SharedSession
from core.errors import Unauthenticated
from core.eventlog import EventLog
from core.models import User
from core.ratelimit import ActionLimiter, LoginLimiter
from core.settings import Settings
from core.signins import SignIns
from schema.loaders import Loaders
from storage import Links, Storage
from workers.broker import Jobs


@dataclass
class Context:
    """Built once per HTTP request, or once per WebSocket connection."""

    request: Request | WebSocket
    response: Response | WebSocket
    settings: Settings
    # For work outside the unit of work: a subscription's reads per event.
    sessionmaker: SessionMaker
    login_limiter: LoginLimiter
    action_limiter: ActionLimiter
    storage: Storage
    # Depot's signed links (every download URL), pointed at this request's host in development.
    links: Links
    events: EventLog
    # This process's sign-in cache and credential watches: `signins.changed(user_id)`
    # after any committed change to a user's credentials or account.
    signins: SignIns
    jobs: Jobs
    request_id: str
    principal: Principal | None = None
    # Why the credentials presented were refused; None when none were presented.
    auth_error: Unauthenticated | None = None
    # Set by the graphql-transport-ws handler from the `connection_init` payload.
    connection_params: dict[str, Any] | None = field(default=None)
    # The metrics label of each trusted document, by its text (api.persisted): what
    # schema.metrics names an operation by that ran one of them.
    trusted_labels: Mapping[str, str] = field(default_factory=dict)
    # The request's (or the WebSocket operation's) one session: `async with context.db() as db`.
    db: SharedSession = field(init=False)
    # Replaced for every operation (schema.operation.DepotOperation).
    loaders: Loaders = field(init=False)

    def __post_init__(self) -> None:
        self.db = SharedSession(self.sessionmaker)
        self.loaders = Loaders(self.db)

    @property
    def user(self) -> User | None:
        return self.principal.user if self.principal is not None else None

    @property
    def client_address(self) -> str:
        client = self.request.client
        return client.host if client is not None else "unknown"

    def require_principal(self) -> Principal:
        """The signed-in caller, or ``UNAUTHENTICATED`` saying what went wrong."""
        if self.principal is None:
            raise self.auth_error or Unauthenticated(
                "Sign in first: send `Authorization: Bearer <token>`."
            )
        return self.principal


Info: TypeAlias = strawberry.Info[Context, None]
