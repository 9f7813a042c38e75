"""Structured logging: JSON lines in production, readable text in development.

Everything goes through the standard library's root logger, so uvicorn's,
SQLAlchemy's and Strawberry's records come out in the same format, and every
line carries the ``request_id`` bound by the request-id middleware (and,
when tracing is on, the ``trace_id`` and ``span_id`` of the current span).
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog
from structlog.typing import Processor

from core.tracing import add_trace_ids


def configure_logging(level: str, *, json: bool, stream: TextIO | None = None) -> None:
    """Route every log record through structlog, rendered as JSON or text."""
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        # The current span's ids, beside the request id (core.tracing).
        add_trace_ids,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Processor
    if json:
        shared.append(structlog.processors.format_exc_info)
        renderer = structlog.processors.JSONRenderer()
    else:
        # Plain tracebacks, named rather than left to structlog's default, which is
        # rich's when rich is installed (api/__init__.py keeps it out of Depot's processes).
        renderer = structlog.dev.ConsoleRenderer(
            colors=False, exception_formatter=structlog.dev.plain_traceback
        )
    structlog.configure(
        # The level first: a line below it (the access line, at WARNING) costs one
        # call instead of the whole chain (context, trace ids, an ISO timestamp).
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    # The request-id middleware writes one access line per request, with its id.
    logging.getLogger("uvicorn.access").disabled = True
