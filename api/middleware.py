"""Request ids: accepted from ``X-Request-ID`` or generated, echoed back, logged.

The same middleware times each request for the access line and for
``depot_http_requests_total`` / ``depot_http_request_duration_seconds``
(labelled by route template, never by path), and counts open WebSockets.
"""

from __future__ import annotations

import re
import time
import uuid

import structlog
from starlette.datastructures import MutableHeaders
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


def logged_path(scope: Scope) -> str:
    """The request's path as the access line shows it: secret path parameters redacted.

    The router records the parameters it matched in ``scope`` (the same
    dict this middleware passed down), so this is known after the call.
    """
    path: str = scope["path"]
    for name, value in scope.get("path_params", {}).items():
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

    def __init__(self, app: ASGIApp, *, metrics: bool = True) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request_id = _incoming_id(scope) or uuid.uuid4().hex
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
                redact_server_span(scope["method"], scope["path"], logged_path(scope))
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
                        path=logged_path(scope),
                        status=status,
                        duration_ms=round(seconds * 1000, 2),
                    )
