"""Request ids: accepted from ``X-Request-ID`` or generated, echoed back, logged."""

from __future__ import annotations

import re
import time
import uuid

import structlog
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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


def _incoming_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            return candidate if _VALID_ID.fullmatch(candidate) else None
    return None


class RequestIdMiddleware:
    """Binds a request id to the request's state, its log lines and its response.

    Also writes one access log line per HTTP request, after it ends.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request_id = _incoming_id(scope) or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message).append(HEADER, request_id)
                # Routed by now, and the server span ends with the body: redact it here.
                redact_server_span(scope["method"], scope["path"], logged_path(scope))
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                if scope["type"] == "http":
                    logger.info(
                        "request",
                        method=scope["method"],
                        path=logged_path(scope),
                        status=status,
                        duration_ms=round((time.perf_counter() - started) * 1000, 2),
                    )
