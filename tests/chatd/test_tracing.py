"""The tracing seam without a server: when the environment switches tracing on, what a span
records (and never records), and the trace ids in log lines."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trio

from chatd.config import (
    DEFAULT_OTLP_TRACES_ENDPOINT,
    ConfigError,
    TracingConfig,
    load_config,
)
from chatd.domain.models import OutboxRow
from chatd.observability.logs import JsonFormatter, TextFormatter
from chatd.observability.tracing import Tracer, each, spans_of, start_tracing

from .tracing_support import CALLER, CALLER_TRACE, WaitableExporter, attr, trace_of

ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"
TRACES_ENDPOINT = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"


@pytest.mark.parametrize(
    ("file", "env", "enabled"),
    [
        ("", {}, False),  # the default
        ("", {"OTEL_SERVICE_NAME": "x", "OTEL_TRACES_SAMPLER": "always_on"}, False),  # no endpoint
        ("", {ENDPOINT: "http://collector:4318"}, True),
        ("", {TRACES_ENDPOINT: "http://collector:4318/v1/traces"}, True),
        ("", {"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ("", {ENDPOINT: "http://collector:4318", "OTEL_TRACES_EXPORTER": "none"}, False),
        ("", {ENDPOINT: "http://collector:4318", "OTEL_SDK_DISABLED": "true"}, False),
        ("enabled = false", {ENDPOINT: "http://collector:4318"}, False),  # set here: it decides
        ("enabled = true", {}, True),
        ("enabled = true", {"OTEL_SDK_DISABLED": "TRUE"}, False),  # the SDK's kill switch
        ("", {ENDPOINT: "http://collector:4318", "CHATD_TRACING__ENABLED": "false"}, False),
        ("enabled = true", {"OTEL_TRACES_EXPORTER": "none"}, True),  # chatd's key decides
    ],
)
def test_when_tracing_is_on(tmp_path: Path, file: str, env: dict[str, str], enabled: bool) -> None:
    path = tmp_path / "chatd.toml"
    path.write_text(f"[tracing]\n{file}\n")
    assert load_config(path, env).tracing.enabled is enabled


def test_endpoint_and_service_name_come_from_chatd_then_the_environment(tmp_path: Path) -> None:
    on = {"CHATD_TRACING__ENABLED": "true"}
    tracing = load_config(None, on).tracing
    assert (tracing.endpoint, tracing.service_name) == (DEFAULT_OTLP_TRACES_ENDPOINT, "chatd")
    # the base endpoint gets the signal's path; the traces one is taken as it is
    env = {ENDPOINT: "https://otel.example:4318/", "OTEL_SERVICE_NAME": "chat-eu"}
    tracing = load_config(None, env).tracing
    assert (tracing.endpoint, tracing.service_name) == (
        "https://otel.example:4318/v1/traces",
        "chat-eu",
    )
    env[TRACES_ENDPOINT] = "http://tempo:4318/custom"
    assert load_config(None, env).tracing.endpoint == "http://tempo:4318/custom"
    path = tmp_path / "chatd.toml"
    path.write_text(
        '[tracing]\nendpoint = "http://jaeger:4318/v1/traces"\n'
        'service_name = "chatd-a"\nsample_ratio = 0.25\n'
    )
    tracing = load_config(path, env).tracing
    assert tracing == TracingConfig(True, "http://jaeger:4318/v1/traces", "chatd-a", 0.25)


@pytest.mark.parametrize(
    ("env", "blamed"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"),
        (
            {ENDPOINT: "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ),
        ({TRACES_ENDPOINT: "collector:4318"}, TRACES_ENDPOINT),
    ],
)
def test_what_chatd_cannot_do_is_an_error_naming_the_variable(
    env: dict[str, str], blamed: str
) -> None:
    with pytest.raises(ConfigError, match=f"environment variable {blamed}"):
        load_config(None, {"CHATD_TRACING__ENABLED": "true", **env})
    # ...but not while tracing is off
    assert not load_config(None, {"CHATD_TRACING__ENABLED": "false", **env}).tracing.enabled


def test_sample_ratio_is_checked() -> None:
    with pytest.raises(ConfigError, match=r"tracing\.sample_ratio"):
        load_config(None, {"CHATD_TRACING__SAMPLE_RATIO": "1.5"})


@pytest.fixture
async def tracer() -> AsyncIterator[tuple[Tracer, WaitableExporter]]:
    exporter = WaitableExporter()
    started = start_tracing(TracingConfig(enabled=True), exporter=exporter)
    yield started, exporter
    await trio.to_thread.run_sync(started.shutdown)  # again is harmless


async def test_a_caller_context_is_continued_and_a_malformed_one_ignored(
    tracer: tuple[Tracer, WaitableExporter],
) -> None:
    t, exporter = tracer
    continued = t.start("a", CALLER, kind="server")
    for bad in ("nonsense", "00-" + "0" * 32 + "-b7ad6b7169203331-01", "ff-" + CALLER[3:]):
        fresh = t.start("b", bad, kind="server")
        assert fresh.context.split("-")[1] != CALLER_TRACE
        fresh.end()
    assert continued.context.split("-")[1] == CALLER_TRACE
    continued.end()
    await trio.to_thread.run_sync(t.shutdown)
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert spans["a"].parent is not None
    assert spans["b"].parent is None


async def test_a_failed_span_names_the_error_type_only(
    tracer: tuple[Tracer, WaitableExporter],
) -> None:
    t, exporter = tracer

    def fail_inside() -> None:
        with spans_of(t, "step", [CALLER, None, CALLER]) as spans:
            assert list(spans) == [CALLER]  # one per distinct parent; none without one
            raise ValueError("duplicate key (alice@example.com, hello)")

    with pytest.raises(ValueError, match="duplicate key"):
        fail_inside()
    await trio.to_thread.run_sync(t.shutdown)
    [span] = exporter.get_finished_spans()
    assert span.status.description == "ValueError"
    assert attr(span, "error.type") == "ValueError"
    assert not span.events  # no exception event: its text would quote the data
    assert "alice" not in json.dumps(dict(span.attributes or {}))


async def test_each_links_the_later_spans_to_the_first(
    tracer: tuple[Tracer, WaitableExporter],
) -> None:
    t, exporter = tracer
    others = [t.start("send", None) for _ in range(3)]
    started = each(t, "store commit", [o.context for o in others])
    for span in [*started.values(), *others]:
        span.end()
    await trio.to_thread.run_sync(t.shutdown)
    commits = [s for s in exporter.get_finished_spans() if s.name == "store commit"]
    first, *later = commits
    assert not first.links
    assert first.context is not None
    assert [s.links[0].context.span_id for s in later] == [first.context.span_id] * 2
    assert len({trace_of(s) for s in commits}) == 3  # each in its own send's trace


def _record() -> logging.LogRecord:
    return logging.LogRecord("chatd.test", logging.INFO, __file__, 1, "hello", (), None)


async def test_log_lines_carry_the_ids_of_the_current_span(
    tracer: tuple[Tracer, WaitableExporter],
) -> None:
    t, _ = tracer
    json_lines, text_lines = JsonFormatter(trace_ids=t.ids), TextFormatter(trace_ids=t.ids)
    assert "trace_id" not in json.loads(json_lines.format(_record()))  # outside any span
    span = t.start("request", CALLER, kind="server")
    with t.activate(span):
        inside = json.loads(json_lines.format(_record()))
        text = text_lines.format(_record())
        assert t.current() == span.context
    span.end()
    assert (inside["trace_id"], inside["span_id"]) == tuple(span.context.split("-")[1:3])
    assert f"trace_id={CALLER_TRACE}" in text
    assert t.current() is None
    # tracing off: the formatter has no ids to ask for
    assert "trace_id" not in json.loads(JsonFormatter().format(_record()))
    await trio.to_thread.run_sync(t.shutdown)


async def test_an_unsampled_trace_records_nothing_but_still_carries_its_context() -> None:
    # sample_ratio 0: no new trace is sampled; a caller's sampled one still is (parent-based)
    exporter = WaitableExporter()
    t = start_tracing(TracingConfig(enabled=True, sample_ratio=0.0), exporter=exporter)
    root = t.start("POST /api/chat/message", None, kind="server")
    commit = t.start("store commit", root.context, kind="client")
    assert commit.context == root.context  # handed on as it is: same trace, flag off
    assert int(root.context[-2:], 16) & 1 == 0  # not sampled
    for span in (commit, root):
        span.end()
    followed = t.start("SEND /app/chat.send", CALLER, kind="server")
    child = t.start("store commit", followed.context)
    child.end()
    followed.end()
    await trio.to_thread.run_sync(t.shutdown)
    assert sorted(s.name for s in exporter.get_finished_spans()) == [
        "SEND /app/chat.send",
        "store commit",
    ]
    assert {trace_of(s) for s in exporter.get_finished_spans()} == {CALLER_TRACE}


def test_a_row_repointed_at_another_trace_context_is_otherwise_the_same() -> None:
    # `with_trace_context` spells every field out (for speed): it must stay `replace`.
    now = datetime.now(UTC)
    row = OutboxRow(
        7,
        uuid.uuid4(),
        uuid.uuid4(),
        3,
        "message",
        "/topic/session.x",
        "{}",
        2,
        now,
        "err",
        now,
        "00-a-b-01",
    )
    assert row.with_trace_context(CALLER) == replace(row, trace_context=CALLER)
