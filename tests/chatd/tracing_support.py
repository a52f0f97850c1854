"""Helpers for the tracing tests: an in-memory span exporter trio code can wait on, and the
questions the tests ask of a trace (the spans of one trace id, each span's parent)."""

from __future__ import annotations

import contextlib
import gzip
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import h11
import trio
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan
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
        with contextlib.suppress(trio.RunFinishedError):
            trio.from_thread.run_sync(self._wake, trio_token=self.token)
        return result

    def _wake(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def wait_for(
        self, ready: Callable[[list[ReadableSpan]], bool], seconds: float = 15.0
    ) -> list[ReadableSpan]:
        """The finished spans, once `ready` says they are all there."""
        with trio.fail_after(seconds):
            while not ready(spans := list(self.get_finished_spans())):
                await self.changed.wait()
        return spans


def complete(trace_id: str, counts: dict[str, int]) -> Callable[[list[ReadableSpan]], bool]:
    """A `WaitableExporter.wait_for` condition: trace `trace_id` has at least `counts` spans
    of each name. Spans end (and are exported) in no fixed order, so a test waits for every
    span it looks at, not only the last one it expects."""

    def ready(spans: list[ReadableSpan]) -> bool:
        trace = in_trace(spans, trace_id)
        return all(len(named(trace, name)) >= n for name, n in counts.items())

    return ready


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
    found: int = span.context.span_id
    return found


def trace_of(span: ReadableSpan) -> str:
    assert span.context is not None
    return f"{span.context.trace_id:032x}"


def attr(span: ReadableSpan, key: str) -> Any:
    """An attribute's value (KeyError when the span has none)."""
    return (span.attributes or {})[key]


def instance_of(span: ReadableSpan) -> object:
    return span.resource.attributes.get("service.instance.id")


def assert_no_private_data(spans: Sequence[ReadableSpan], *secrets: str) -> None:
    """No span name or attribute holds any of `secrets` (message text, email addresses)."""
    for span in spans:
        texts = [span.name, *(str(v) for v in (span.attributes or {}).values())]
        for secret in secrets:
            assert not any(secret in text for text in texts), (span.name, secret)


class OtlpReceiver:
    """A tiny OTLP/HTTP collector: decodes each ``POST /v1/traces`` body as the protobuf
    ``ExportTraceServiceRequest`` (what a real collector would get) and answers 200."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], ExportTraceServiceRequest]] = []
        self.changed = trio.Event()
        self.url = ""

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/v1/traces"
        task_status.started()
        await trio.serve_listeners(self._serve, listeners)

    async def _serve(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        target, headers, body = "", {}, b""
        async with stream:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                elif isinstance(event, h11.Request):
                    target = event.target.decode()
                    headers = {k.decode().lower(): v.decode() for k, v in event.headers}
                    body = b""
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    self._received(target, headers, body)
                    answer = ExportTraceServiceResponse().SerializeToString()
                    await stream.send_all(
                        conn.send(
                            h11.Response(
                                status_code=200,
                                headers=[
                                    ("content-type", "application/x-protobuf"),
                                    ("content-length", str(len(answer))),
                                ],
                            )
                        )
                        or b""
                    )
                    await stream.send_all(conn.send(h11.Data(data=answer)) or b"")
                    await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
                    conn.start_next_cycle()
                else:  # ConnectionClosed, PAUSED
                    return

    def _received(self, target: str, headers: dict[str, str], body: bytes) -> None:
        encoding = headers.get("content-encoding", "")
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        self.requests.append((target, headers, request))
        self.changed.set()
        self.changed = trio.Event()

    def spans(self) -> list[tuple[dict[str, str], ProtoSpan]]:
        """(resource attributes, span message) of every span received."""
        found: list[tuple[dict[str, str], ProtoSpan]] = []
        for _, _, request in self.requests:
            for resource_spans in request.resource_spans:
                resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    found.extend((resource, span) for span in scope_spans.spans)
        return found
