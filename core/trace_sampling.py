"""Where a trace may start, and the spans dropped before the SDK is asked.

Imported by :func:`core.tracing.configure_tracing` only, when tracing is on:
the SDK costs start-up time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes

# The kinds of span that begin a unit of work: a request, a job attempt.
ROOT_KINDS = frozenset({SpanKind.SERVER, SpanKind.CONSUMER})

# In the context a root span is started with: :class:`QuickDrops` already drew this
# root's lot, and it won (see QuickDrops.root).
_DRAWN: Final = otel_context.create_key("depot-root-sampled")


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
        if kind in ROOT_KINDS:
            if parent_context is not None and parent_context.get(_DRAWN) is True:
                return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)
        else:
            parent = trace.get_current_span(parent_context).get_span_context()
            if not parent.is_valid:
                sampler = ALWAYS_OFF
        return sampler.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return f"WorkRoots{{{self.sampler.get_description()}}}"


class QuickDrops:
    """The request and attempt spans a ratio sampler drops, made without the SDK.

    With ``OTEL_TRACES_SAMPLER=parentbased_traceidratio`` at 1 %, 99 requests in
    100 get a span that records nothing, yet the SDK's ``start_span`` made it
    through four samplers, a ``SamplingResult``, the tracer's own metrics and
    two id draws: ~25 calls, ~40 k instructions, a tenth of a ``{ __typename }``.
    Here that span is one id draw and the ratio's test, the SDK's own
    (``TraceIdRatioBased``: the trace id's 64 low bits under a bound), and a
    ``NonRecordingSpan`` with a valid context, as the SDK's: its trace id goes
    on to the job the request starts, its log lines and any ``traceparent``
    sent on. A child of a parent sampled out (an attempt of a job whose
    request was) is dropped the same way, as ``ParentBased`` would.

    Only for samplers whose decision is that test: ``traceidratio``,
    ``parentbased_traceidratio`` and the ``always_off`` ones (:meth:`of`);
    with any other every span goes to the SDK, as before.
    """

    def __init__(self, bound: int, follows_parent: bool, ids: IdGenerator) -> None:
        self._bound = bound
        self._follows_parent = follows_parent
        self._ids = ids
        self._flags = TraceFlags(
            TraceFlags.RANDOM_TRACE_ID if ids.is_trace_id_random() else TraceFlags.DEFAULT
        )

    @classmethod
    def of(cls, sampler: Sampler, ids: IdGenerator) -> QuickDrops | None:
        """For the sampler a :class:`WorkRoots` wraps, if it is one whose drops are known."""
        root, follows_parent = sampler, False
        if isinstance(sampler, ParentBased):
            # Only ParentBased's defaults for a parent sampled out: drop.
            if not (
                sampler._remote_parent_not_sampled is ALWAYS_OFF
                and sampler._local_parent_not_sampled is ALWAYS_OFF
            ):
                return None
            root, follows_parent = sampler._root, True
        if isinstance(root, TraceIdRatioBased):
            return cls(root.bound, follows_parent, ids)
        if root is ALWAYS_OFF:
            return cls(0, follows_parent, ids)
        return None

    def root(self) -> NonRecordingSpan | None:
        """A root span the sampler drops; None if this root is sampled: then start it
        with :meth:`sampled` for its context, or its lot would be drawn twice."""
        trace_id = self._ids.generate_trace_id()
        if trace_id & TraceIdRatioBased.TRACE_ID_LIMIT < self._bound:
            return None
        span_id = self._ids.generate_span_id()
        return NonRecordingSpan(SpanContext(trace_id, span_id, False, self._flags))

    def child(self, parent: SpanContext) -> NonRecordingSpan | None:
        """A child of ``parent`` (a valid context) dropped because its parent was; else None."""
        if not self._follows_parent or parent.trace_flags.sampled:
            return None
        span_id = self._ids.generate_span_id()
        return NonRecordingSpan(
            SpanContext(parent.trace_id, span_id, False, parent.trace_flags, parent.trace_state)
        )

    @staticmethod
    def sampled(parent: Context | None) -> Context:
        """``parent`` (or the current context), marked: :class:`WorkRoots` samples its root."""
        return otel_context.set_value(_DRAWN, True, parent)
