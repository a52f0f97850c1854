"""`OtelTracer`: `chatd.observability.tracing.Tracer` over the OpenTelemetry SDK.

The only module that imports ``opentelemetry`` (import-linter: ``opentelemetry-in-
observability-only``), and it is imported only when tracing is on.

One `TracerProvider` per instance, not the process-global one: the SDK lets the global be set
once, and tests run two instances in one process. Its `BatchSpanProcessor` queues each ended
span (a bounded deque: ``OTEL_BSP_MAX_QUEUE_SIZE``, default 2048, newest dropped beyond with a
warning) and a **worker thread of the SDK** ("OtelBatchSpanRecordProcessor", a daemon) exports
them in batches over OTLP/HTTP (``requests``, in that thread: the trio thread never waits for
a collector). `shutdown` exports what is left and joins it; it blocks, so the supervisor runs
it in a trio worker thread at the end of ``serve``, bounded by `tracing.FLUSH_TIMEOUT`.

Context: the current span lives in OpenTelemetry's context, a context variable; trio copies
context variables into tasks when they are started, so a span made current in a request is
the parent of what the request's task (and tasks it starts) traces. Where the chain breaks
(the committer's task, the outbox, RabbitMQ), the context travels as traceparent text instead
(`chatd.observability.tracing`). Only ``traceparent`` is carried; ``tracestate`` is dropped.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import Final

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import (
    SERVICE_INSTANCE_ID,
    SERVICE_NAME,
    SERVICE_VERSION,
    Resource,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, Sampler, TraceIdRatioBased
from opentelemetry.trace import Link, SpanContext, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from chatd.config import DEFAULT_OTLP_TRACES_ENDPOINT, DEFAULT_SERVICE_NAME, TracingConfig
from chatd.observability.tracing import TRACEPARENT, Attribute, Span, SpanKind
from chatd.release import version

_KINDS: Final = {
    "internal": trace.SpanKind.INTERNAL,
    "server": trace.SpanKind.SERVER,
    "client": trace.SpanKind.CLIENT,
    "producer": trace.SpanKind.PRODUCER,
    "consumer": trace.SpanKind.CONSUMER,
}
_PROPAGATOR: Final = TraceContextTextMapPropagator()
_ROOT: Final = Context()  # no parent: `start` never picks up the current span by accident


def traceparent(ctx: SpanContext) -> str:
    """The W3C ``traceparent`` text of `ctx` (version 00)."""
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"


def _parent(text: str | None) -> Context:
    """The context `text` names; the propagator validates it (a caller's header is untrusted
    input): anything malformed is ignored and the span starts a new trace."""
    return _ROOT if not text else _PROPAGATOR.extract({TRACEPARENT: text}, context=_ROOT)


class OtelSpan:
    """`Span` over an SDK span."""

    __slots__ = ("span",)

    def __init__(self, span: trace.Span) -> None:
        self.span = span

    @property
    def context(self) -> str:
        return traceparent(self.span.get_span_context())

    def set(self, key: str, value: Attribute) -> None:
        self.span.set_attribute(key, value)

    def fail(self, error: BaseException | str) -> None:
        # The type only: an exception's text can quote data (a driver's error names the row).
        kind = error if isinstance(error, str) else type(error).__name__
        self.span.set_status(Status(StatusCode.ERROR, kind))
        self.span.set_attribute("error.type", kind)

    def end(self) -> None:
        self.span.end()


class _Unsampled:
    """The `Span` of work continuing a trace that was not sampled: nothing is recorded and
    the parent's traceparent is handed on as it is (what the parent-based sampler decides
    for such a child anyway, at a small fraction of the SDK's cost per span)."""

    __slots__ = ("context",)

    def __init__(self, parent: str) -> None:
        self.context = parent

    def set(self, key: str, value: Attribute) -> None:
        pass

    def fail(self, error: BaseException | str) -> None:
        pass

    def end(self) -> None:
        pass


def _unsampled(text: str) -> bool:
    """True for a well-formed traceparent whose sampled flag is off."""
    try:
        return len(text) == 55 and not int(text[53:55], 16) & 1
    except ValueError:
        return False


class OtelTracer:
    """`Tracer` with its own provider, batch processor and OTLP/HTTP exporter."""

    def __init__(
        self, config: TracingConfig, *, instance_id: str, exporter: object | None = None
    ) -> None:
        """`exporter` replaces the OTLP one (an SDK ``SpanExporter``, e.g. in-memory)."""
        if exporter is None:
            exporter = OTLPSpanExporter(endpoint=config.endpoint or DEFAULT_OTLP_TRACES_ENDPOINT)
        if not isinstance(exporter, SpanExporter):
            raise TypeError(f"not an OpenTelemetry SpanExporter: {exporter!r}")
        self.instance_id = instance_id
        resource = Resource.create(
            {
                SERVICE_NAME: config.service_name or DEFAULT_SERVICE_NAME,
                SERVICE_INSTANCE_ID: instance_id,
                SERVICE_VERSION: version(),
            }
        )
        sampler: Sampler | None = None  # the SDK's: OTEL_TRACES_SAMPLER, else parent-based on
        if config.sample_ratio is not None:
            sampler = ParentBased(TraceIdRatioBased(config.sample_ratio))
        self.provider = TracerProvider(sampler=sampler, resource=resource, shutdown_on_exit=False)
        # Children of an unsampled trace are skipped outright only when the sampler would
        # drop them too (parent-based: the default, and `sample_ratio`).
        self._follow_parent = isinstance(self.provider.sampler, ParentBased)
        self.provider.add_span_processor(BatchSpanProcessor(exporter))
        self._tracer = self.provider.get_tracer("chatd", version())

    def start(
        self,
        name: str,
        parent: str | None,
        *,
        kind: SpanKind = "internal",
        attributes: Mapping[str, Attribute] | None = None,
        link: str | None = None,
    ) -> Span:
        if parent is not None and kind != "server" and self._follow_parent and _unsampled(parent):
            # (a server span's parent is a caller's header: always validated by the SDK)
            return _Unsampled(parent)
        links = None
        if link is not None:
            linked = trace.get_current_span(_parent(link)).get_span_context()
            links = [Link(linked)] if linked.is_valid else None
        return OtelSpan(
            self._tracer.start_span(name, _parent(parent), _KINDS[kind], attributes, links)
        )

    def records(self, parent: str) -> bool:
        return not (self._follow_parent and _unsampled(parent))

    def activate(self, span: Span) -> AbstractContextManager[None]:
        assert isinstance(span, OtelSpan)
        return _active(span.span)

    def current(self) -> str | None:
        ctx = trace.get_current_span().get_span_context()
        return traceparent(ctx) if ctx.is_valid else None

    def ids(self) -> tuple[str, str] | None:
        ctx = trace.get_current_span().get_span_context()
        return (f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}") if ctx.is_valid else None

    def shutdown(self) -> None:
        self.provider.shutdown()


@contextmanager
def _active(span: trace.Span) -> Iterator[None]:
    # No automatic exception recording: its text could quote data (see `OtelSpan.fail`).
    with trace.use_span(span, record_exception=False, set_status_on_exception=False):
        yield
