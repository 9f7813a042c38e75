"""A server span per HTTP request and WebSocket, when tracing is on (``core.tracing``).

Depot's own instead of ``opentelemetry-instrumentation-asgi``: that one built
a dozen attributes from every request's headers (decoding each, twice),
wrapped ``receive`` and ``send`` and timed the request for OpenTelemetry
metrics nobody reads (Depot's are Prometheus'), sampled or not — about 90 µs
of CPU per `{ __typename }`, a fifth of the request (``bench.cost``). This
one decides first: the span's context comes only from the headers the
propagator reads (``traceparent``, ``tracestate``, ``baggage``), and a span
the sampler drops costs its start and end; only a recorded one gets its
attributes and a ``send`` that notes the status.

No spans per body chunk or WebSocket message (an upload would make
thousands), none for the probes and the scrape. The request-id middleware
redacts secret path parameters from the span when the answer starts
(:func:`core.tracing.redact_server_span`).
"""

from __future__ import annotations

from typing import Final

from opentelemetry import context, propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.tracing import start_work_span

# Probes and the scrape: many a minute, each alike.
UNTRACED_PATHS: Final = frozenset({"/healthz", "/readyz", "/metrics"})

_tracer = trace.get_tracer("depot.http")


class ServerSpans:
    """ASGI middleware: each request or WebSocket a ``SERVER`` span, current while it runs."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # The header names the configured propagators read (OTEL_PROPAGATORS), as bytes.
        self._fields = frozenset(
            name.lower().encode("latin-1") for name in propagate.get_global_textmap().fields
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket") or scope["path"] in UNTRACED_PATHS:
            await self.app(scope, receive, send)
            return
        carrier = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope["headers"]
            if name in self._fields
        }
        parent = propagate.extract(carrier) if carrier else None
        method = scope["method"] if kind == "http" else "WEBSOCKET"
        span = start_work_span(_tracer, f"{method} {scope['path']}", SpanKind.SERVER, parent)
        token = context.attach(trace.set_span_in_context(span, parent))
        if not span.is_recording():
            # Sampled out: the span is current, for its trace id (logs, a job's
            # traceparent), and nothing more is asked of it.
            try:
                await self.app(scope, receive, send)
            finally:
                context.detach(token)
            return
        try:
            span.set_attributes(_request_attributes(scope, method))
            await self.app(scope, receive, _noting_status(span, send))
        except BaseException as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise
        finally:
            route = getattr(scope.get("route"), "path", None)
            if isinstance(route, str):
                span.set_attribute("http.route", route)
            context.detach(token)
            span.end()


def _request_attributes(scope: Scope, method: str) -> dict[str, str | int]:
    """The semantic conventions' request attributes (no query string: it may carry secrets)."""
    attributes: dict[str, str | int] = {
        "http.request.method": method,
        "url.scheme": scope.get("scheme", "http"),
        "url.path": scope["path"],
        "network.protocol.version": scope.get("http_version", "1.1"),
    }
    server = scope.get("server")
    if server:
        attributes["server.address"] = server[0]
        if server[1] is not None:
            attributes["server.port"] = server[1]
    client = scope.get("client")
    if client:
        attributes["client.address"] = client[0]
    for name, value in scope["headers"]:
        if name == b"user-agent":
            attributes["user_agent.original"] = value.decode("latin-1")
            break
    return attributes


def _noting_status(span: trace.Span, send: Send) -> Send:
    async def send_noting_status(message: Message) -> None:
        if message["type"] == "http.response.start":
            status: int = message["status"]
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR))
        await send(message)

    return send_noting_status
