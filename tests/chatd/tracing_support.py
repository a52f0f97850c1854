"""Helpers for the tracing tests: an in-memory span exporter trio code can wait on, and the
questions the tests ask of a trace (the spans of one trace id, each span's parent)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import trio
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

#: A caller's trace context, as a client would send it in a traceparent header.
CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"
CALLER = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"


class WaitableExporter(InMemorySpanExporter):
    """The SDK's in-memory exporter, telling trio whenever the export thread hands it spans
    (a condition to wait on, instead of polling)."""

    def __init__(self) -> None:
        super().__init__()
        self.token = trio.lowlevel.current_trio_token()
        self.changed = trio.Event()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = super().export(spans)
        try:
            trio.from_thread.run_sync(self._wake, trio_token=self.token)
        except trio.RunFinishedError:
            pass
        return result

    def _wake(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def wait_for(self, ready: Callable[[list[ReadableSpan]], bool],
                       seconds: float = 15.0) -> list[ReadableSpan]:
        """The finished spans, once `ready` says they are all there."""
        with trio.fail_after(seconds):
            while not ready(spans := list(self.get_finished_spans())):
                await self.changed.wait()
        return spans


def in_trace(spans: Sequence[ReadableSpan], trace_id: str) -> list[ReadableSpan]:
    """The spans of one trace (hex id)."""
    return [s for s in spans if s.context is not None and f"{s.context.trace_id:032x}" == trace_id]


def named(spans: Sequence[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def one(spans: Sequence[ReadableSpan], name: str) -> ReadableSpan:
    found = named(spans, name)
    assert len(found) == 1, (name, [s.name for s in spans])
    return found[0]


def parent_of(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


def instance_of(span: ReadableSpan) -> object:
    return span.resource.attributes.get("service.instance.id")


def assert_no_private_data(spans: Sequence[ReadableSpan], *secrets: str) -> None:
    """No span name or attribute holds any of `secrets` (message text, email addresses)."""
    for span in spans:
        texts = [span.name, *(str(v) for v in (span.attributes or {}).values())]
        for secret in secrets:
            assert not any(secret in text for text in texts), (span.name, secret)
