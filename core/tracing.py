"""OpenTelemetry traces, set up from the standard ``OTEL_*`` variables; off by default.

``OTEL_TRACES_EXPORTER`` chooses where spans go: ``otlp`` (OTLP over
HTTP/protobuf to ``OTEL_EXPORTER_OTLP_ENDPOINT``, by default
``http://localhost:4318``), ``console`` (JSON on stdout), or ``none`` — the
default here, unlike the SDK's, so a process nobody set up for tracing
exports nothing and installs nothing: every span is then OpenTelemetry's
no-op one. The SDK itself reads the rest: ``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``, sampling (``OTEL_TRACES_SAMPLER`` and
``OTEL_TRACES_SAMPLER_ARG``), batching (``OTEL_BSP_*``) and the exporter's
``OTEL_EXPORTER_OTLP_*`` options.

Switched on, a process traces its HTTP requests (``api.tracing``), its
GraphQL operations (``schema.tracing``), its SQL (:func:`trace_sql`, every
engine :func:`core.db.create_engine` opens), its Redis commands (the client from
:func:`core.redis_client.open_redis`; not the broker's polling) and its S3
calls.

**What it costs is decided first.** A trace starts only at a request or a job
attempt (:class:`core.trace_sampling.WorkRoots`): a Redis command or an S3 call outside both (a
listener's blocking read, maintenance) makes no trace of its own, and SQL is
traced only inside a span that records. A span the sampler dropped gets no
attributes and no children from Depot's code, so sampling at a low ratio
(``OTEL_TRACES_SAMPLER=parentbased_traceidratio``) costs each unsampled
request an id draw (:class:`core.trace_sampling.QuickDrops`, which makes the
spans such a sampler drops without the SDK: :func:`start_work_span`) and a
context switch, and each SQL statement one context lookup.

**A job carries its trace through the queue.** The request that starts a job
stores its span's W3C ``traceparent`` on the job row
(:func:`current_traceparent`); the worker's span for each attempt is a child
of it (:func:`start_attempt_span`), the job's events carry its trace id, and so
does ``Job.traceId``.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from sqlalchemy import event
from structlog.typing import EventDict, WrappedLogger

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from sqlalchemy.ext.asyncio import AsyncEngine

    from core.trace_sampling import QuickDrops

EXPORTERS: Final = ("otlp", "console", "none")
_PROPAGATOR: Final = TraceContextTextMapPropagator()
_tracer = trace.get_tracer("depot")
# The configured sampler's drops, when they are known (configure_tracing).
_quick_drops: QuickDrops | None = None


class TracingConfigError(ValueError):
    """``OTEL_TRACES_EXPORTER`` names an exporter Depot does not ship."""


def configure_tracing(default_service_name: str) -> bool:
    """Install a tracer provider for this process if ``OTEL_TRACES_EXPORTER`` asks for one.

    Call it once, when a process starts, before it opens a database or
    Redis client. ``default_service_name`` is used unless ``OTEL_SERVICE_NAME``
    says otherwise. Returns whether traces are on.
    """
    name = os.environ.get("OTEL_TRACES_EXPORTER", "none").strip().lower() or "none"
    if name == "none":
        return False
    if name not in EXPORTERS:
        raise TracingConfigError(
            f"OTEL_TRACES_EXPORTER={name!r} is not one Depot ships; use one of "
            f"{', '.join(EXPORTERS)}."
        )
    # Imported only when on: the SDK and the instrumentations cost start-up time.
    from opentelemetry.instrumentation.botocore import AiobotocoreInstrumentor
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SpanExporter,
    )

    from core.trace_sampling import QuickDrops, WorkRoots

    global _quick_drops
    service = os.environ.get("OTEL_SERVICE_NAME") or default_service_name
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service}))
    _quick_drops = QuickDrops.of(provider.sampler, provider.id_generator)
    # The sampler the SDK chose from OTEL_TRACES_SAMPLER, starting traces only at work.
    provider.sampler = WorkRoots(provider.sampler)
    exporter: SpanExporter
    if name == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    else:
        exporter = ConsoleSpanExporter()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    # S3: aioboto3's calls go through aiobotocore's own async ``_make_api_call``,
    # which BotocoreInstrumentor (botocore's, synchronous) never sees.
    AiobotocoreInstrumentor().instrument()  # type: ignore[no-untyped-call]
    _s3_only_when_recording()
    return True


# -- Redis -------------------------------------------------------------------------


def trace_redis(client: Redis) -> None:
    """A ``CLIENT`` span per command ``client`` sends (scripts too), inside a span that records.

    Depot's own rather than ``opentelemetry-instrumentation-redis``, which
    formatted every command's arguments into a statement and opened a
    current span through the sampler before it looked whether anything
    records: in the worker six commands a job, each ~25 µs in a trace sampled
    out or outside any. Here such a command costs a context lookup. The span
    names the command, never its arguments (event payloads, keys with ids).
    Pub/Sub reads go through their own connection and make no spans.
    """
    execute: Callable[..., Awaitable[Any]] = client.execute_command
    attributes = _redis_attributes(client)

    async def execute_command(*args: Any, **options: Any) -> Any:
        if not trace.get_current_span().is_recording():
            return await execute(*args, **options)
        command = str(args[0]).upper() if args else "REDIS"
        with _redis_tracer.start_as_current_span(
            command,
            kind=SpanKind.CLIENT,
            attributes={**attributes, "db.operation.name": command},
        ):
            return await execute(*args, **options)

    client.execute_command = execute_command  # type: ignore[method-assign]


def _redis_attributes(client: Redis) -> dict[str, str | int]:
    """What every command of one client shares."""
    connection: Mapping[str, Any] = client.connection_pool.connection_kwargs
    attributes: dict[str, str | int] = {"db.system.name": "redis"}
    if connection.get("db") is not None:
        attributes["db.namespace"] = str(connection["db"])
    if connection.get("host"):
        attributes["server.address"] = str(connection["host"])
    if isinstance(connection.get("port"), int):
        attributes["server.port"] = connection["port"]
    return attributes


_redis_tracer = trace.get_tracer("depot.redis")


# -- S3 --------------------------------------------------------------------------


def _s3_only_when_recording() -> None:
    """Let the aiobotocore instrumentation's two wrappers run only inside a span that records.

    Sampled out, they still built the call's attributes, opened a current span
    through the sampler and put an X-Ray trace header on the request: about
    350 µs of CPU on a 2.2 ms S3 call (HeadBucket against moto, a trace sampled
    out). Each wrapper is ``wrapt``'s, keeping the original as ``__wrapped__``;
    the test is one context lookup.
    """
    from aiobotocore.client import AioBaseClient  # type: ignore[import-untyped]
    from botocore.endpoint import Endpoint  # type: ignore[import-untyped]

    traced_call = AioBaseClient._make_api_call
    plain_call = traced_call.__wrapped__

    async def _make_api_call(self: AioBaseClient, operation_name: str, api_params: Any) -> Any:
        call = traced_call if trace.get_current_span().is_recording() else plain_call
        return await call.__get__(self, type(self))(operation_name, api_params)

    traced_prepare = Endpoint.prepare_request
    plain_prepare = traced_prepare.__wrapped__

    def prepare_request(self: Endpoint, request: Any) -> Any:
        prepare = traced_prepare if trace.get_current_span().is_recording() else plain_prepare
        return prepare.__get__(self, type(self))(request)

    AioBaseClient._make_api_call = _make_api_call
    Endpoint.prepare_request = prepare_request


# -- SQL ---------------------------------------------------------------------------


def trace_sql(engine: AsyncEngine) -> None:
    """A ``CLIENT`` span per SQL statement ``engine`` sends, inside a span that records.

    A hook on the engine's dialect, where it hands a statement to the DBAPI
    cursor (``do_execute`` and its two siblings), rather than the engine's
    ``before_cursor_execute`` / ``after_cursor_execute`` events: once an
    engine has any listener of those, SQLAlchemy runs its whole event
    dispatch for every statement (``before_execute`` and ``after_execute``
    looked up and their parameters distilled too), ~20 µs a statement sampled
    out or outside any request. This hook costs such a statement one context
    lookup; in a span that records it makes the statement's span around the
    cursor's call itself. Depot's own rather than
    ``opentelemetry-instrumentation-sqlalchemy``, which parsed the engine's URL
    and stripped the statement's comments with a regular expression for every
    statement before it asked the sampler.
    """
    sync = engine.sync_engine
    dialect = sync.dialect
    shared = _engine_attributes(sync.url.database, sync.url.host, sync.url.port)
    shared["db.system.name"] = dialect.name

    def do_execute(cursor: Any, statement: str, parameters: Any, context: Any) -> bool:
        if not trace.get_current_span().is_recording():
            return False
        with _sql_span(statement, shared):
            dialect.do_execute(cursor, statement, parameters, context)
        return True

    def do_execute_no_params(cursor: Any, statement: str, context: Any) -> bool:
        if not trace.get_current_span().is_recording():
            return False
        with _sql_span(statement, shared):
            dialect.do_execute_no_params(cursor, statement, context)
        return True

    def do_executemany(cursor: Any, statement: str, parameters: Any, context: Any) -> bool:
        if not trace.get_current_span().is_recording():
            return False
        with _sql_span(statement, shared):
            dialect.do_executemany(cursor, statement, parameters, context)
        return True

    event.listen(sync, "do_execute", do_execute)
    event.listen(sync, "do_execute_no_params", do_execute_no_params)
    event.listen(sync, "do_executemany", do_executemany)


@contextmanager
def _sql_span(statement: str, shared: Mapping[str, str | int]) -> Iterator[None]:
    """The span of one statement's call to its cursor; an error ends it as one."""
    operation = statement.split(None, 1)[0].upper() if statement else "SQL"
    attributes = {**shared, "db.operation.name": operation, "db.query.text": statement}
    span = _sql_tracer.start_span(operation, kind=SpanKind.CLIENT, attributes=attributes)
    try:
        yield
    except BaseException as error:
        span.set_status(Status(StatusCode.ERROR, type(error).__name__))
        raise
    finally:
        span.end()


def _engine_attributes(
    database: str | None, host: str | None, port: int | None
) -> dict[str, str | int]:
    """What every statement of one database shares (no password, no user)."""
    attributes: dict[str, str | int] = {}
    if database:
        attributes["db.namespace"] = database
    if host:
        attributes["server.address"] = host
    if port:
        attributes["server.port"] = port
    return attributes


_sql_tracer = trace.get_tracer("depot.sql")


def enabled() -> bool:
    """Whether this process installed a tracer provider (:func:`configure_tracing`)."""
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def current_traceparent() -> str | None:
    """The current span's W3C ``traceparent``, to hand on; None when nothing is traced."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get("traceparent")


def trace_id_of(traceparent: str | None) -> str | None:
    """The 32-hex-digit trace id a ``traceparent`` names (``00-<trace id>-<span id>-<flags>``)."""
    if traceparent is None:
        return None
    parts = traceparent.split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else None


def start_attempt_span(name: str, traceparent: str | None, attributes: Mapping[str, Any]) -> Span:
    """A span for one job attempt, the child of the request span ``traceparent`` names.

    Started, not made current, and ended by the caller: an attempt spans
    several worker hooks; the code that runs on its behalf makes it current
    with ``trace.use_span(span, end_on_exit=False)``.
    """
    parent = _PROPAGATOR.extract({"traceparent": traceparent}) if traceparent else None
    return start_work_span(_tracer, name, SpanKind.CONSUMER, parent, attributes)


def start_work_span(
    tracer: trace.Tracer,
    name: str,
    kind: SpanKind,
    parent: Context | None,
    attributes: Mapping[str, Any] | None = None,
) -> Span:
    """A request's (``SERVER``) or an attempt's (``CONSUMER``) span, child of ``parent``
    (else of the current context): ``tracer.start_span``, but a span the configured
    sampler drops is made without the SDK (:class:`core.trace_sampling.QuickDrops`)."""
    quick = _quick_drops
    if quick is not None:
        parent_span = trace.get_current_span(parent).get_span_context()
        if parent_span.is_valid:
            dropped = quick.child(parent_span)
        else:
            dropped = quick.root()
            if dropped is None:  # this root's lot is drawn: sampled
                parent = quick.sampled(parent)
        if dropped is not None:
            return dropped
    return tracer.start_span(name, parent, kind, attributes=attributes)


def add_trace_ids(logger: WrappedLogger, method: str, event: EventDict) -> EventDict:
    """structlog processor: ``trace_id`` and ``span_id`` of the current span, if one records."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event.setdefault("trace_id", format(context.trace_id, "032x"))
        event.setdefault("span_id", format(context.span_id, "016x"))
    return event


def redact_server_span(method: str, raw_path: str, path: str) -> None:
    """Rename the current server span and put ``path`` for ``raw_path`` in its attributes.

    The ASGI instrumentation records the raw path when a request starts;
    secret path parameters (signed download tokens) are only known once the
    router matched them, so the request-id middleware redacts them here, at
    the end, before the span is exported.
    """
    if raw_path == path:
        return
    span = trace.get_current_span()
    if not span.is_recording():
        return
    span.update_name(f"{method} {path}")
    recorded: Mapping[str, Any] = getattr(span, "attributes", None) or {}
    span.set_attributes(
        {
            key: value.replace(raw_path, path)
            for key, value in recorded.items()
            if isinstance(value, str) and raw_path in value
        }
    )
