"""Tracing on one instance (docs/architecture.md, Tracing): a send over REST or STOMP is one
trace from the caller's traceparent to every local delivery, through the committer's task and
the outbox rows (direct delivery); with tracing off nothing is traced at all."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
import trio
from opentelemetry.sdk import trace as sdk_trace

from chatd.config import TracingConfig

from ..tracing_support import (
    CALLER,
    CALLER_TRACE,
    OtlpReceiver,
    WaitableExporter,
    assert_no_private_data,
    attr,
    complete,
    in_trace,
    named,
    one,
    parent_of,
    span_id,
    trace_of,
)
from .conftest import ALICE, BOB, Chat, chat_config, raw_ws_peer, start_chat

SECRET = "the text must never reach a span"
DELIVERIES = ("deliver /topic/session", "deliver /user/queue/messages")


@pytest.fixture
def quick_export(monkeypatch: pytest.MonkeyPatch) -> None:
    # The batch processor exports every 5 s by default; the standard knob makes it prompt.
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "20")


async def traced_chat(
    nursery: trio.Nursery,
    tmp_path: Path,
    key_pair: tuple[bytes, Path],
    exporter: WaitableExporter | None,
    *,
    enabled: bool = True,
) -> Chat:
    url = f"sqlite:///{tmp_path / 'chat.sqlite3'}"
    config = replace(
        chat_config(tmp_path, url, key_pair[1]), tracing=TracingConfig(enabled=enabled)
    )
    return await start_chat(nursery, config, key_pair[0], span_exporter=exporter)


@pytest.fixture
async def traced(
    nursery: trio.Nursery, tmp_path: Path, key_pair: tuple[bytes, Path], quick_export: None
) -> AsyncIterator[tuple[Chat, WaitableExporter]]:
    exporter = WaitableExporter()
    chat = await traced_chat(nursery, tmp_path, key_pair, exporter)
    async with chat.client:
        yield chat, exporter
    chat.scope.cancel()


async def subscribed(nursery: trio.Nursery, chat: Chat, email: str, sid: str):  # type: ignore[no-untyped-def]
    peer, _ = await raw_ws_peer(nursery, chat)
    await peer.connect(Authorization=f"Bearer {chat.token(email)}")
    await peer.subscribe(f"/topic/session.{sid}", "topic")
    await peer.subscribe("/user/queue/messages", "inbox")
    return peer


def one_message(request: str) -> dict[str, int]:
    """Every span of one message's trace on one instance (direct delivery)."""
    return {request: 1, "store commit": 1, "outbox publish": 1, DELIVERIES[0]: 1, DELIVERIES[1]: 2}


async def test_a_rest_send_is_one_trace_from_the_callers_request_to_every_delivery(
    traced: tuple[Chat, WaitableExporter], nursery: trio.Nursery
) -> None:
    chat, exporter = traced
    sid = await chat.init()
    bob = await subscribed(nursery, chat, BOB, sid)
    answer = await chat.client.post(
        "/api/chat/message",
        json={"sessionId": sid, "content": SECRET, "clientMessageId": "t1"},
        headers={**chat.auth(ALICE), "traceparent": CALLER},
    )
    assert answer.status_code == 201, answer.text
    for _ in range(2):  # topic and inbox
        assert (await bob.frame()).command == "MESSAGE"

    spans = await exporter.wait_for(complete(CALLER_TRACE, one_message("POST /api/chat/message")))
    spans = await exporter.wait_for(lambda s: bool(named(s, "POST /api/chat/init")))
    trace = in_trace(spans, CALLER_TRACE)
    request = one(trace, "POST /api/chat/message")
    assert request.parent is not None
    assert request.parent.is_remote  # the caller's span
    assert f"{request.parent.span_id:016x}" == CALLER.split("-")[2]
    assert attr(request, "http.route") == "/api/chat/message"
    assert attr(request, "http.response.status_code") == 201
    commit = one(trace, "store commit")
    publish = one(trace, "outbox publish")
    assert parent_of(commit) == parent_of(publish) == span_id(request)
    assert attr(commit, "db.system.name") == "sqlite"
    assert attr(publish, "chatd.outbox.path") == "direct"
    deliveries = [s for name in DELIVERIES for s in named(trace, name)]
    assert {parent_of(s) for s in deliveries} == {span_id(publish)}
    topic = one(trace, "deliver /topic/session")
    assert attr(topic, "messaging.destination.name") == f"/topic/session.{sid}"
    assert attr(topic, "chatd.seq") == 1
    # nothing of the trace names the text or a participant
    assert_no_private_data(trace, SECRET, ALICE, BOB)
    # the request ran inside its span's trace; other requests (init) have traces of their own
    init = one(spans, "POST /api/chat/init")
    assert trace_of(init) != CALLER_TRACE
    assert init.parent is None


async def test_a_stomp_send_continues_the_traceparent_of_its_frame(
    traced: tuple[Chat, WaitableExporter], nursery: trio.Nursery
) -> None:
    chat, exporter = traced
    sid = await chat.init()
    alice = await subscribed(nursery, chat, ALICE, sid)
    await alice.subscribe("/user/queue/ack", "ack")
    await alice.send(
        "SEND",
        {
            "destination": "/app/chat.send",
            "traceparent": CALLER,
            "content-type": "application/json",
        },
        json.dumps({"sessionId": sid, "content": SECRET, "clientMessageId": "s1"}).encode(),
    )
    spans = await exporter.wait_for(complete(CALLER_TRACE, one_message("SEND /app/chat.send")))
    trace = in_trace(spans, CALLER_TRACE)
    frame = one(trace, "SEND /app/chat.send")
    assert f"{parent_of(frame) or 0:016x}" == CALLER.split("-")[2]
    assert parent_of(one(trace, "store commit")) == span_id(frame)
    publish = one(trace, "outbox publish")
    assert parent_of(publish) == span_id(frame)
    assert {parent_of(s) for name in DELIVERIES for s in named(trace, name)} == {span_id(publish)}
    assert_no_private_data(trace, SECRET, ALICE, BOB)


async def test_sends_committed_together_keep_a_trace_each_linked_to_the_batch(
    traced: tuple[Chat, WaitableExporter], nursery: trio.Nursery
) -> None:
    # A pipelining client: its sends are committed in one batch, and each still gets its own
    # commit span in its own trace, the later ones linking the batch's first.
    chat, exporter = traced
    sid = await chat.init()
    alice = await subscribed(nursery, chat, ALICE, sid)
    frames = [
        (
            "SEND",
            {"destination": "/app/chat.send", "content-type": "application/json"},
            json.dumps({"sessionId": sid, "content": f"m{i}", "clientMessageId": f"p{i}"}).encode(),
        )
        for i in range(5)
    ]
    await alice.send_many(frames)
    spans = await exporter.wait_for(
        lambda s: all(
            len(named(s, name)) >= 5
            for name in ("SEND /app/chat.send", "store commit", "deliver /topic/session")
        )
    )
    sends = named(spans, "SEND /app/chat.send")
    commits = named(spans, "store commit")
    assert len(sends) == len(commits) == 5
    assert len({trace_of(s) for s in sends}) == 5  # a trace per message
    for send in sends:
        [commit] = [c for c in commits if parent_of(c) == span_id(send)]
        assert trace_of(commit) == trace_of(send)
    batched = [c for c in commits if attr(c, "chatd.batch.size") > 1]
    if batched:  # how many frames one batch takes depends on timing; the links do not
        leaders = [c for c in batched if not c.links]
        followers = [c for c in batched if c.links]
        assert leaders
        assert len(followers) >= attr(batched[0], "chatd.batch.size") - 1
        assert {f.links[0].context.span_id for f in followers} <= {span_id(c) for c in leaders}


async def test_tracing_off_makes_no_span_and_keeps_no_trace_context(
    nursery: trio.Nursery,
    tmp_path: Path,
    key_pair: tuple[bytes, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started: list[str] = []
    real = sdk_trace.Tracer.start_span

    def counting(self: sdk_trace.Tracer, name: str, *args: object, **kwargs: object) -> object:
        started.append(name)
        return real(self, name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(sdk_trace.Tracer, "start_span", counting)
    exporter = WaitableExporter()
    chat = await traced_chat(nursery, tmp_path, key_pair, exporter, enabled=False)
    async with chat.client:
        sid = await chat.init()
        alice = await subscribed(nursery, chat, ALICE, sid)
        answer = await chat.client.post(
            "/api/chat/message",
            headers={**chat.auth(ALICE), "traceparent": CALLER},
            json={"sessionId": sid, "content": "rest", "clientMessageId": "off-1"},
        )
        assert answer.status_code == 201
        await alice.send(
            "SEND",
            {
                "destination": "/app/chat.send",
                "traceparent": CALLER,
                "content-type": "application/json",
            },
            json.dumps({"sessionId": sid, "content": "stomp", "clientMessageId": "off-2"}).encode(),
        )
        for _ in range(4):  # both messages, on the topic and the inbox
            assert (await alice.frame()).command == "MESSAGE"
    chat.scope.cancel()
    await chat.done.wait()
    assert started == []
    assert list(exporter.get_finished_spans()) == []
    # nor is the caller's context carried: the outbox rows hold none
    with sqlite3.connect(tmp_path / "chat.sqlite3") as db:
        (carried,) = db.execute(
            "SELECT count(*) FROM chat_message_outbox WHERE trace_context IS NOT NULL"
        ).fetchone()
        (rows,) = db.execute("SELECT count(*) FROM chat_message_outbox").fetchone()
    assert (carried, rows) == (0, 6)


async def test_spans_reach_a_collector_over_otlp_http_and_are_flushed_at_shutdown(
    nursery: trio.Nursery,
    tmp_path: Path,
    key_pair: tuple[bytes, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The real exporter (no test exporter): protobuf over HTTP to a receiver in the test.
    # The batch processor would wait 10 minutes: the spans arrive because shutdown exports
    # what is queued.
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "600000")
    receiver = OtlpReceiver()
    await nursery.start(receiver.run)
    url = f"sqlite:///{tmp_path / 'chat.sqlite3'}"
    config = replace(
        chat_config(tmp_path, url, key_pair[1]),
        tracing=TracingConfig(enabled=True, endpoint=receiver.url, service_name="chatd-otlp"),
    )
    chat = await start_chat(nursery, config, key_pair[0])
    async with chat.client:
        sid = await chat.init()
        await chat.client.post(
            "/api/chat/message",
            headers={**chat.auth(ALICE), "traceparent": CALLER},
            json={"sessionId": sid, "content": SECRET, "clientMessageId": "otlp-1"},
        )
    assert receiver.requests == []  # still queued
    chat.scope.cancel()
    await chat.done.wait()

    [(target, headers, _)] = receiver.requests[:1]
    assert target == "/v1/traces"
    assert headers["content-type"] == "application/x-protobuf"
    received = receiver.spans()
    ours = [(res, span) for res, span in received if span.trace_id.hex() == CALLER_TRACE]
    names = sorted(span.name for _, span in ours)
    assert names == sorted(
        [
            "POST /api/chat/message",
            "store commit",
            "outbox publish",
            "deliver /topic/session",
            "deliver /user/queue/messages",
            "deliver /user/queue/messages",
        ]
    )
    assert {res["service.name"] for res, _ in received} == {"chatd-otlp"}
    request = next(span for _, span in ours if span.name == "POST /api/chat/message")
    assert request.parent_span_id.hex() == CALLER.split("-")[2]
    assert SECRET.encode() not in b"".join(r.SerializeToString() for _, _, r in receiver.requests)


async def test_a_batch_send_is_one_trace_with_every_message_delivered_in_it(
    traced: tuple[Chat, WaitableExporter],
) -> None:
    # One request, one trace: its messages share the commit and publish-round spans (one
    # each, as they share the request's context) and each row is delivered in it.
    chat, exporter = traced
    sid = await chat.init()
    answer = await chat.client.post(
        "/api/chat/messages",
        headers={**chat.auth(ALICE), "traceparent": CALLER},
        json={
            "sessionId": sid,
            "messages": [
                {"content": f"{SECRET} {i}", "clientMessageId": f"b{i}"} for i in range(3)
            ],
        },
    )
    assert answer.status_code == 201, answer.text
    spans = await exporter.wait_for(
        complete(
            CALLER_TRACE,
            {
                "POST /api/chat/messages": 1,
                "store commit": 1,
                "outbox publish": 1,
                DELIVERIES[0]: 3,
                DELIVERIES[1]: 6,
            },
        )
    )
    trace = in_trace(spans, CALLER_TRACE)
    request = one(trace, "POST /api/chat/messages")
    assert parent_of(one(trace, "store commit")) == span_id(request)
    publish = one(trace, "outbox publish")
    assert attr(publish, "chatd.outbox.round_rows") == 9
    deliveries = [s for name in DELIVERIES for s in named(trace, name)]
    assert len(deliveries) == 9
    assert {parent_of(s) for s in deliveries} == {span_id(publish)}
    assert sorted(attr(s, "chatd.seq") for s in named(trace, DELIVERIES[0])) == [1, 2, 3]
    assert_no_private_data(trace, SECRET, ALICE, BOB)
