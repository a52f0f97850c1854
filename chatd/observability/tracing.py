"""Distributed tracing: the seam traced components use, with no OpenTelemetry import.

Why a seam: tracing is off by default and must then cost nothing on the send path — no span
objects, no context work, not even the SDK import. A traced component has a `tracer`
attribute, ``None`` when off (the only check on the hot path), which the supervisor sets when
``[tracing]`` is on; `start_tracing` imports the OpenTelemetry implementation
(`chatd.observability.otel`, the only module that imports ``opentelemetry``) only then.

One trace per message, from the send to every instance that delivered it. The call chain
breaks twice (the committer's task, the outbox; RabbitMQ), so the context crosses those
places as data, W3C ``traceparent`` text (`TRACEPARENT`):

    REST request / STOMP SEND span   (an incoming traceparent header continues the caller's)
      └ ChatService._prepare reads the current span → NewMessage.trace_context
          └ store commit               (SendCommitter, one span per message of the batch)
          └ the outbox rows' trace_context column (written in the same transaction)
              └ outbox publish         (committer's direct delivery, or the outbox publisher)
                  ├ deliver            (LocalDelivery, one per row: topic and user queues)
                  └ publish chatd.events        (RabbitMQ producer; traceparent AMQP header)
                      └ receive chatd.instance.X   (each instance's consumer)
                          └ deliver

Group commit and publish rounds serve many messages in one step; each message's trace gets
its own span of that step (`each`), the later ones linked to the first, so every trace is
whole and still shows which messages went together. Spans never hold message text or email
addresses: ids, seqs, sizes, destinations kinds (docs/security.md).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Final, Literal, Protocol

from chatd.config import TracingConfig
from chatd.domain.models import OutboxRow

#: The W3C Trace Context header: on HTTP requests, STOMP SEND frames and AMQP messages.
TRACEPARENT: Final = "traceparent"
#: Seconds ``serve`` waits for the last export at shutdown before leaving it to the daemon
#: export thread (a collector that does not answer must not hold the process).
FLUSH_TIMEOUT: Final = 5.0

Attribute = str | int | float | bool
SpanKind = Literal["internal", "server", "client", "producer", "consumer"]


class Span(Protocol):
    """One started span; `end` it exactly once."""

    @property
    def context(self) -> str:
        """This span's ``traceparent``: what to hand on so later work becomes its child."""
        ...

    def set(self, key: str, value: Attribute) -> None:
        """Set an attribute (never message text or an email address)."""
        ...

    def fail(self, error: BaseException | str) -> None:
        """Mark the span failed, naming only the exception's type (its text may quote data)
        or the given error kind (e.g. an HTTP status)."""
        ...

    def end(self) -> None:
        """End the span; it is exported by the SDK's worker thread soon after."""
        ...


class Tracer(Protocol):
    """What traced components need from OpenTelemetry (`chatd.observability.otel`)."""

    #: This process's ``service.instance.id`` (also the RabbitMQ bridge's instance id).
    instance_id: str

    def start(
        self,
        name: str,
        parent: str | None,
        *,
        kind: SpanKind = "internal",
        attributes: Mapping[str, Attribute] | None = None,
        link: str | None = None,
    ) -> Span:
        """Start a span, child of the `parent` traceparent (an invalid one, or None, starts
        a new trace; the current span is never used implicitly), linked to `link`."""
        ...

    def records(self, parent: str) -> bool:
        """False when a child of `parent` would record nothing (its trace is not sampled):
        then skip building its span and hand `parent` on as it is."""
        ...

    def activate(self, span: Span) -> AbstractContextManager[None]:
        """Make `span` the current one inside the block (OpenTelemetry's context variable,
        which trio copies into tasks started meanwhile); `current` then returns it."""
        ...

    def current(self) -> str | None:
        """The current span's traceparent, or None outside any span."""
        ...

    def ids(self) -> tuple[str, str] | None:
        """(trace id, span id) of the current span in hex, for log lines; None outside."""
        ...

    def shutdown(self) -> None:
        """Export what is queued and stop the export thread. Blocking: run it in a thread."""
        ...


def start_tracing(
    config: TracingConfig, *, instance_id: str | None = None, exporter: object | None = None
) -> Tracer:
    """A tracer exporting to `config.endpoint` over OTLP/HTTP, or to `exporter` (an
    OpenTelemetry ``SpanExporter``: tests pass the SDK's in-memory one). Its export thread
    runs until `Tracer.shutdown`."""
    from chatd.observability.otel import OtelTracer

    return OtelTracer(config, instance_id=instance_id or uuid.uuid4().hex, exporter=exporter)


def each(
    tracer: Tracer,
    name: str,
    parents: Iterable[str | None],
    *,
    kind: SpanKind = "internal",
    attributes: Mapping[str, Attribute] | None = None,
) -> dict[str, Span]:
    """One span per distinct parent (None skipped), the later ones linked to the first: what
    a step serving many messages at once (a group commit, a publish round) records in each
    message's trace. Keyed by parent."""
    spans: dict[str, Span] = {}
    first: str | None = None
    for parent in parents:
        if parent is None or parent in spans:
            continue
        span = spans[parent] = tracer.start(
            name, parent, kind=kind, attributes=attributes, link=first
        )
        first = first or span.context
    return spans


@contextmanager
def spans_of(
    tracer: Tracer,
    name: str,
    parents: Iterable[str | None],
    *,
    kind: SpanKind = "internal",
    attributes: Mapping[str, Attribute] | None = None,
) -> Iterator[dict[str, Span]]:
    """`each` for the length of a block: an exception fails every span; all end on exit."""
    started = each(tracer, name, parents, kind=kind, attributes=attributes)
    try:
        yield started
    except BaseException as exc:
        for span in started.values():
            span.fail(exc)
        raise
    finally:
        for span in started.values():
            span.end()


@dataclass(frozen=True, slots=True)
class TracedRound:
    """A publish round's rows, each carrying its message's round span as `trace_context`
    (so the sink's spans become its children), and those spans."""

    rows: Sequence[OutboxRow]
    spans: dict[str, Span]

    def span_of(self, row: OutboxRow) -> Span | None:
        """The round span `row` (one of `rows`) points at."""
        for span in self.spans.values():
            if span.context == row.trace_context:
                return span
        return None


@contextmanager
def publish_round(
    tracer: Tracer, rows: Sequence[OutboxRow], *, path: Literal["direct", "publisher"]
) -> Iterator[TracedRound]:
    """Spans ``outbox publish`` (one per message of the round) around handing `rows` to a
    sink; yields the rows re-pointed at them. Rows without a trace context pass unchanged."""
    attributes = {"chatd.outbox.path": path, "chatd.outbox.round_rows": len(rows)}
    with spans_of(
        tracer, "outbox publish", (r.trace_context for r in rows), attributes=attributes
    ) as spans:
        traced = [
            r
            if r.trace_context is None
            or (context := spans[r.trace_context].context) == r.trace_context
            else r.with_trace_context(context)
            for r in rows
        ]
        yield TracedRound(traced, spans)
