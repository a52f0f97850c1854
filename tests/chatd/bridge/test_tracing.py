"""Tracing across instances (docs/architecture.md, Tracing): two chatd instances in this
process, on one PostgreSQL database and one RabbitMQ vhost, export to one in-memory exporter;
a message sent on A is one trace from A's REST request, through the outbox (whichever
instance's publisher claims its rows) and the RabbitMQ publish (traceparent in the AMQP
headers), to the receive and delivery on every instance with a subscriber: B (Bob) and A
itself (Alice's inbox)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import trio

from chatd.auth.keys import ensure_dev_keys
from chatd.config import RabbitMQConfig, TracingConfig

from ..realtime.conftest import ALICE, BOB, Chat, chat_config, raw_ws_peer, start_chat
from ..tracing_support import (
    CALLER,
    CALLER_TRACE,
    WaitableExporter,
    assert_no_private_data,
    attr,
    complete,
    in_trace,
    instance_of,
    named,
    one,
    parent_of,
    span_id,
)

pytestmark = pytest.mark.timeout(120)
SECRET = "nobody but Bob reads this"


async def instance(
    nursery: trio.Nursery,
    tmp_path: Path,
    name: str,
    database_url: str,
    vhost: str,
    exporter: WaitableExporter,
) -> Chat:
    private, public, _ = ensure_dev_keys(tmp_path)  # one key pair for both instances
    config = chat_config(tmp_path / name, database_url, public)
    config = replace(
        config,
        tracing=TracingConfig(enabled=True, service_name="chatd-test"),
        rabbitmq=RabbitMQConfig(
            url=f"amqp://guest:guest@127.0.0.1:5672/{vhost}", reconnect_initial_seconds=0.2
        ),
    )
    return await start_chat(nursery, config, private.read_bytes(), span_exporter=exporter)


async def test_one_trace_from_the_send_on_a_to_the_deliveries_on_both_instances(
    nursery: trio.Nursery,
    tmp_path: Path,
    database_url: str,
    vhost: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "20")
    exporter = WaitableExporter()
    a = await instance(nursery, tmp_path, "a", database_url, vhost, exporter)
    b = await instance(nursery, tmp_path, "b", database_url, vhost, exporter)
    sid = await a.init()
    bob, _ = await raw_ws_peer(nursery, b)
    await bob.connect(Authorization=f"Bearer {b.token(BOB)}")
    await bob.subscribe(f"/topic/session.{sid}", "topic")
    await bob.subscribe("/user/queue/messages", "inbox")
    alice, _ = await raw_ws_peer(nursery, a)
    await alice.connect(Authorization=f"Bearer {a.token(ALICE)}")
    await alice.subscribe("/user/queue/messages", "inbox")

    answer = await a.client.post(
        "/api/chat/message",
        json={"sessionId": sid, "content": SECRET, "clientMessageId": "x1"},
        headers={**a.auth(ALICE), "traceparent": CALLER},
    )
    assert answer.status_code == 201, answer.text
    for peer in (bob, bob, alice):
        assert (await peer.frame()).command == "MESSAGE"

    spans = await exporter.wait_for(
        complete(
            CALLER_TRACE,
            {
                "POST /api/chat/message": 1,
                "store commit": 1,
                "outbox publish": 1,
                "publish chatd.events": 3,
                "receive chatd.events": 3,
                "deliver /topic/session": 1,
                "deliver /user/queue/messages": 2,
            },
        )
    )
    trace = in_trace(spans, CALLER_TRACE)
    request = one(trace, "POST /api/chat/message")
    on_a = instance_of(request)
    # whichever instance's outbox publisher claimed the rows publishes them: both may, each
    # in a round of its own
    rounds = {span_id(r): r for r in named(trace, "outbox publish")}
    assert 1 <= len(rounds) <= 2
    for publish_round in rounds.values():
        assert attr(publish_round, "chatd.outbox.path") == "publisher"  # not direct: RabbitMQ
        assert parent_of(publish_round) == parent_of(one(trace, "store commit"))
        assert parent_of(publish_round) == span_id(request)
    producers = named(trace, "publish chatd.events")
    assert len(producers) == 3  # the topic row and both inboxes
    for producer in producers:
        round_of = rounds[parent_of(producer) or 0]
        assert instance_of(producer) == instance_of(round_of)

    receives = named(trace, "receive chatd.events")
    assert {parent_of(r) for r in receives} <= {span_id(p) for p in producers}
    by_id = {span_id(r): r for r in receives}
    deliveries = [s for s in trace if s.name.startswith("deliver")]
    for delivery in deliveries:
        receive = by_id[parent_of(delivery) or 0]  # delivered right under its consumer span...
        assert instance_of(receive) == instance_of(delivery)  # ...on the same instance
        assert attr(receive, "messaging.destination.name") == (
            f"chatd.instance.{instance_of(receive)}"
        )
    where = {(d.name, instance_of(d) == on_a) for d in deliveries}
    assert where == {
        ("deliver /topic/session", False),
        ("deliver /user/queue/messages", False),
        ("deliver /user/queue/messages", True),
    }
    assert len({instance_of(s) for s in trace}) == 2
    assert {s.resource.attributes["service.name"] for s in trace} == {"chatd-test"}
    assert_no_private_data(trace, SECRET, ALICE, BOB)
    a.scope.cancel()
    b.scope.cancel()
