"""Building the GraphQL context of a request, from the lifespan state and the caller's credentials.

The ``Context`` type itself is ``schema.context.Context``: what resolvers may
use. Here is where its values come from, which only the API knows: the
long-lived clients the app's lifespan put in ``request.state``, the links to
the byte routes (at the request's own host in development), the request id
from ``RequestIdMiddleware``, and the principal behind ``Authorization``.

An HTTP request has one database session (``Context.db``), opened by the
first block that needs it: sign-in reads the caller with it, and the
resolvers and dataloaders then go on in it. :func:`end_request` closes it
once the answer is ready, whether or not an operation ran.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket

from core.auth import Principal, presented
from core.errors import Unauthenticated
from core.settings import Settings
from core.signins import DetachedPrincipal
from schema.context import Context

# Where a request's context keeps its shared session for `end_request`.
_SHARED_SESSION = "depot.db"


class SocketContext(Context):
    """A WebSocket's context: its sign-in held detached, a principal built for each use.

    The context lives as long as the socket, hours for a browser tab with a
    subscription open; a principal's ORM ``User`` is about 1.5 KiB of it,
    a :class:`core.signins.DetachedPrincipal` a tuple of the user's columns.
    Each read of ``principal`` (``user``, ``require_principal()``) gets a
    fresh row, as every HTTP request does: resolvers read it, and re-read the
    user before changing them.
    """

    held: DetachedPrincipal | None = None

    @property
    def principal(self) -> Principal | None:
        return self.held.principal() if self.held is not None else None

    @principal.setter
    def principal(self, principal: Principal | None) -> None:
        self.held = DetachedPrincipal.of(principal) if principal is not None else None


async def build_context(
    request: Request | WebSocket, response: Response | WebSocket, settings: Settings
) -> Context:
    """The context of one HTTP request, or of one WebSocket connection.

    An HTTP request is signed in from its ``Authorization`` header here; a
    WebSocket signs in later, from ``connection_init`` (``api.websocket``).
    """
    state = request.state
    context = (Context if isinstance(request, Request) else SocketContext)(
        request=request,
        response=response,
        settings=settings,
        sessionmaker=state.sessionmaker,
        login_limiter=state.login_limiter,
        action_limiter=state.action_limiter,
        storage=state.storage,
        links=state.links.for_request(request),
        events=state.events,
        signins=state.signins,
        jobs=state.jobs,
        request_id=state.request_id,
    )
    if isinstance(request, Request):
        request.scope[_SHARED_SESSION] = context.db
        authorization = request.headers.get("authorization")
        if authorization:
            await sign_in(context, authorization)
    return context


async def end_request(request: Request) -> None:
    """Close the database session of ``request``'s context, if it has one."""
    shared = request.scope.get(_SHARED_SESSION)
    if shared is not None:
        await shared.close()


async def sign_in(context: Context, authorization: str) -> None:
    """Resolve the caller; a refused credential is kept to explain later errors.

    A credential this process verified a moment ago comes from the sign-in
    cache (``core.signins``) without SQL; otherwise it is read in the
    context's shared session: over HTTP the request's resolvers go on in it;
    a WebSocket's is closed at once, so that the socket holds none while it
    waits for operations.
    """
    try:
        credential = presented(context.settings, authorization)
        principal = await context.signins.sign_in(credential, context.db)
        context.principal = principal
    except Unauthenticated as exc:
        context.auth_error = exc
    if isinstance(context.request, WebSocket):
        await context.db.close()
