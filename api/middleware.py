"""Request ids: accepted from ``X-Request-ID`` or generated, echoed back, logged.

The same middleware times each request for the access line and for
``depot_http_requests_total`` / ``depot_http_request_duration_seconds``
(labelled by route template, never by path), and counts open WebSockets.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Sequence

import structlog
from starlette.datastructures import MutableHeaders
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core import metrics
from core.tracing import redact_server_span

HEADER = "X-Request-ID"
# An id from outside is trusted only if it is short and plain: it ends up in logs.
_VALID_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

logger = structlog.get_logger("depot.access")

# Path parameters that are credentials (the signed byte routes' links): an
# access line shows the route, never the token, whose claims name the owner,
# the file and its storage key.
SECRET_PATH_PARAMS = frozenset({"token"})
REDACTED = "<redacted>"


def logged_path(scope: Scope, routes: Sequence[BaseRoute] = ()) -> str:
    """The request's path as the access line shows it: secret path parameters redacted.

    The router records the parameters it matched in ``scope`` (the same
    dict this middleware passed down), so this is known after the call. A
    request answered before the router (a CORS preflight, by the CORS
    middleware: a browser sends one before each PUT to an upload link) has
    none recorded, so its path is matched against ``routes`` here: a few
    regular expressions, for those requests only.
    """
    path: str = scope["path"]
    params = scope.get("path_params")
    if params is None:
        params = {}
        for route in routes:
            match, child = route.matches(scope)
            if match is not Match.NONE:
                params = child.get("path_params", {})
                break
    for name, value in params.items():
        if name in SECRET_PATH_PARAMS and value:
            path = path.replace(str(value), REDACTED)
    return path


# What a request that matched no route is labelled with.
UNMATCHED = "unmatched"


def route_template(scope: Scope) -> str:
    """The template of the route that answered (``/files/download/{token}``), as a label.

    Starlette's router records the route in ``scope``; a request that matched
    none gets one label for all, so no path a client makes up becomes a series.
    """
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED


def _incoming_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            return candidate if _VALID_ID.fullmatch(candidate) else None
    return None


class RequestIdMiddleware:
    """Binds a request id to the request's state, its log lines and its response.

    Also writes one access log line per HTTP request, after it ends, and,
    with ``metrics``, records it and counts the WebSockets it accepted.
    """

    def __init__(
        self, app: ASGIApp, routes: Sequence[BaseRoute] = (), *, metrics: bool = True
    ) -> None:
        self.app = app
        # The app's routes, to find the secret path parameters of a request
        # answered before the router saw it (see logged_path).
        self.routes = routes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        # 128 random bits in hex, as uuid4().hex gave, without building a UUID.
        request_id = _incoming_id(scope) or os.urandom(16).hex()
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500
        started = time.perf_counter()
        accepted = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, accepted
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message).append(HEADER, request_id)
                # Routed by now, and the server span ends with the body: redact it here.
                redact_server_span(scope["method"], scope["path"], logged_path(scope, self.routes))
            elif message["type"] == "websocket.accept" and self.metrics:
                metrics.WEBSOCKET_CONNECTIONS.inc()
                accepted = True
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                if accepted:
                    metrics.WEBSOCKET_CONNECTIONS.dec()
                if scope["type"] == "http":
                    seconds = time.perf_counter() - started
                    if self.metrics:
                        # A dict lookup, a counter step and a histogram bucket: ~2 µs.
                        metrics.http_request(
                            route_template(scope), scope["method"], status, seconds
                        )
                    logger.info(
                        "request",
                        method=scope["method"],
                        path=logged_path(scope, self.routes),
                        status=status,
                        duration_ms=round(seconds * 1000, 2),
                    )
