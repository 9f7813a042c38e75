"""Where a trace may start: at a request or a job attempt, nowhere else.

Imported by :func:`core.tracing.configure_tracing` only, when tracing is on:
the SDK costs start-up time.
"""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes

# The kinds of span that begin a unit of work: a request, a job attempt.
ROOT_KINDS = frozenset({SpanKind.SERVER, SpanKind.CONSUMER})


class WorkRoots(Sampler):
    """The configured sampler (``OTEL_TRACES_SAMPLER``), except that a trace starts only
    at a ``SERVER`` span (a request) or a ``CONSUMER`` one (a job attempt).

    Any other span without a parent is dropped: alone it would be a trace of
    one Redis command or S3 call — a listener's blocking read every few
    seconds, a scheduler's sweep — exported for nobody. Costs a span without
    a parent one context lookup more.
    """

    def __init__(self, sampler: Sampler) -> None:
        self.sampler = sampler

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        sampler = self.sampler
        if kind not in ROOT_KINDS:
            parent = trace.get_current_span(parent_context).get_span_context()
            if not parent.is_valid:
                sampler = ALWAYS_OFF
        return sampler.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return f"WorkRoots{{{self.sampler.get_description()}}}"
