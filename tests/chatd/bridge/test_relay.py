"""`RabbitBridge` in-process against the real RabbitMQ: two bridges (two "instances") on one
vhost, a STOMP peer on the receiving one. What a publisher sees (confirms, refusals) and what a
subscriber sees (each row once, in order) plus the counters metrics will read."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
import trio
import trio.testing

from chatd.bridge import RabbitBridge
from chatd.bridge.amqp import Incoming
from chatd.bridge.keys import binding_destination, binding_key, routing_key
from chatd.config import RabbitMQConfig
from chatd.domain.models import OutboxRow
from chatd.outbox import SinkUnavailable
from chatd.realtime import LocalDelivery
from stomp.broker import user_key
from stomp.trio import BrokerRuntime, TransportInfo, serve_stream

from ...stomp.stomp_peer import Peer
from .conftest import eventually

NO_ACK = ("ack", None, 0)  # acknowledges nothing: these batches came from no channel
DEST = "/topic/relay-test"
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def row(row_id: int, seq: int, destination: str = DEST) -> OutboxRow:
    return OutboxRow(
        row_id,
        uuid.uuid4(),
        uuid.UUID(int=7),
        seq,
        "message",
        destination,
        json.dumps({"seq": seq}),
        0,
        NOW,
        None,
        NOW,
    )


@pytest.fixture
async def pair(
    vhost: str, nursery: trio.Nursery
) -> AsyncIterator[tuple[RabbitBridge, RabbitBridge, Peer]]:
    # bindings outlive their last subscriber half a second (30 s by default)
    config = RabbitMQConfig(
        url=f"amqp://guest:guest@127.0.0.1:5672/{vhost}", unbind_after_seconds=0.5
    )
    bridges = []
    for _ in range(2):
        runtime = BrokerRuntime()
        bridge = RabbitBridge(config, LocalDelivery(runtime))
        runtime.on_destination_active = bridge.destination_active
        await nursery.start(bridge.run)
        assert bridge.connected
        bridges.append(bridge)
    client, server = trio.testing.memory_stream_pair()
    nursery.start_soon(serve_stream, bridges[1].delivery.runtime, server, TransportInfo("memory"))
    peer = Peer(client)
    await peer.connect()
    yield bridges[0], bridges[1], peer
    for bridge in bridges:
        bridge.stop()


async def test_rows_cross_once_in_order_and_the_counters_say_so(
    pair: tuple[RabbitBridge, RabbitBridge, Peer],
) -> None:
    sender, receiver, peer = pair
    await receiver.ensure_bound(DEST)  # what the SUBSCRIBE hook awaits before its RECEIPT
    receiver.release(DEST, subscribed=True)
    await peer.subscribe(DEST)
    assert receiver.bindings == 1
    await receiver.ensure_bound("/topic/refused")  # a SUBSCRIBE the hook then refused...
    assert receiver.bindings == 2
    receiver.release("/topic/refused", subscribed=False)
    assert receiver.bindings == 2  # ...keeps its binding a while (the client may retry)...
    await eventually(lambda: receiver.bindings == 1)  # ...and then leaves none behind

    await sender.publish([row(1, 1), row(2, 2)])
    await sender.publish([row(2, 2), row(3, 3)])  # a republish after a lost confirm
    seqs = []
    with trio.fail_after(10):
        while len(seqs) < 3:
            frame = await peer.frame()
            seqs.append(json.loads(frame.body)["seq"])
    assert seqs == [1, 2, 3]
    assert (sender.published, sender.confirm_count) == (4, 2)
    assert sender.confirm_seconds_sum > 0
    await eventually(lambda: receiver.consumed == 4)
    assert receiver.duplicates == 1

    await peer.send("UNSUBSCRIBE", {"id": "1"})
    await eventually(lambda: receiver.bindings == 0)
    await sender.publish([row(4, 4)])  # confirmed even with nobody bound...
    await trio.sleep(0.3)
    assert receiver.consumed == 4  # ...and nothing reaches the receiver any more


async def test_a_bridge_that_is_not_connected_refuses_without_blame() -> None:
    bridge = RabbitBridge(
        RabbitMQConfig(url="amqp://guest:guest@127.0.0.1:1/%2F"), LocalDelivery(BrokerRuntime())
    )
    with pytest.raises(SinkUnavailable, match="not connected"):
        await bridge.publish([row(1, 1)])
    assert bridge.published == 0


async def test_a_message_that_found_no_subscriber_is_taken_when_it_comes_again(
    pair: tuple[RabbitBridge, RabbitBridge, Peer],
) -> None:
    """Found by the soak: a row consumed while its destination had no local subscriber (the
    binding outlives the last one until RabbitMQ applies the unbind) was remembered as seen,
    so its republish (a lease that expired after a kill -9) was dropped for the subscriber
    that came meanwhile."""
    _, receiver, peer = pair
    first = Incoming("row-9", DEST, "message", str(uuid.UUID(int=7)), 9, b'{"seq": 9}')
    receiver.on_messages([first], NO_ACK)  # nobody here subscribes to DEST: skipped
    await eventually(lambda: receiver.consumed == 1)
    await receiver.ensure_bound(DEST)
    receiver.release(DEST, subscribed=True)
    await peer.subscribe(DEST)
    receiver.on_messages([first], NO_ACK)  # the republish
    with trio.fail_after(10):
        frame = await peer.frame()
    assert json.loads(frame.body) == {"seq": 9}
    receiver.on_messages([first], NO_ACK)  # a true duplicate is still dropped...
    await eventually(lambda: receiver.consumed == 3)
    assert receiver.duplicates == 1


async def test_a_new_binding_forgets_a_session_topic_mark_set_before_it(
    pair: tuple[RabbitBridge, RabbitBridge, Peer],
) -> None:
    """Found by the soak: rows of an older binding (its unbind not applied yet) set the seq
    mark while a new SUBSCRIBE waited for its bind; the replay then trusted a mark past rows
    that were published while no binding existed, and the subscriber never got them."""
    _, receiver, _ = pair
    sid = uuid.UUID(int=42)
    topic = f"/topic/session.{sid}"
    receiver.delivery.seed(sid, 68)  # what a leftover row did before the bind landed
    assert await receiver.ensure_bound(topic)
    receiver.release(topic, subscribed=True)
    assert receiver.delivery.last_seq(sid) is None  # the replay seeds it from the store
    receiver.delivery.seed(sid, 70)
    assert await receiver.ensure_bound(topic)  # already bound: the mark is trusted
    receiver.release(topic, subscribed=True)
    assert receiver.delivery.last_seq(sid) == 70


async def test_a_bind_answered_before_a_later_unbind_does_not_release_a_new_subscribe() -> None:
    """Found by the soak (53 clients with gaps behind their RECEIPT): a SUBSCRIBE refused
    after its bind timed out leaves that bind queued; 30 s later the idle key's unbind is
    queued behind it; a new SUBSCRIBE then waits for its own bind. The old bind's answer came
    first and released it, RabbitMQ then applied the unbind, and what was published until the
    new bind landed never reached the subscriber."""
    bridge = RabbitBridge(
        RabbitMQConfig(url="amqp://guest:guest@127.0.0.1:1/%2F"), LocalDelivery(BrokerRuntime())
    )
    bridge.connected = True  # the link itself is not needed: its answers are played here
    key = routing_key(DEST)
    bridge.destination_active(DEST, True)  # the old SUBSCRIBE's bind: seq 1
    bridge.destination_active(DEST, False)
    bridge._unbind(DEST)  # the idle key's unbind, after the linger: seq 2
    outcome: list[bool] = []

    async def subscribe() -> None:
        outcome.append(await bridge.ensure_bound(DEST))  # the new bind: seq 3

    async with trio.open_nursery() as nursery:
        nursery.start_soon(subscribe)
        await trio.testing.wait_all_tasks_blocked()
        bridge.on_bound(key, 1)  # the old bind's answer: the unbind is still to come
        await trio.testing.wait_all_tasks_blocked()
        assert outcome == []
        assert key not in bridge._bound
        bridge.on_bound(key, 3)  # the new bind's answer
    assert outcome == [True]


async def test_subscribes_while_a_bind_is_on_its_way_submit_no_second_bind() -> None:
    """Found by the soak (no fault, ~120 "cannot subscribe" a minute per instance): a client
    whose SUBSCRIBE was refused after BIND_TIMEOUT subscribes again, and both participants of
    a session may subscribe at once; each submitted one more bind of the same key behind the
    slow ones on the channel, so the binds fell further behind and the refusals fed
    themselves. One bind is on its way per key; its answer releases every waiter."""
    bridge = RabbitBridge(
        RabbitMQConfig(url="amqp://guest:guest@127.0.0.1:1/%2F"), LocalDelivery(BrokerRuntime())
    )
    bridge.connected = True
    submitted: list[tuple[object, ...]] = []
    bridge._link = SimpleNamespace(submit=submitted.append)  # type: ignore[assignment]
    outcome: list[bool] = []

    async def subscribe() -> None:
        outcome.append(await bridge.ensure_bound(DEST))

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(subscribe)
        await trio.testing.wait_all_tasks_blocked()
        assert [command[:2] for command in submitted] == [("bind", routing_key(DEST))]
        bridge.on_bound(routing_key(DEST), submitted[0][2])  # type: ignore[arg-type]
    assert outcome == [True, True, True]
    bridge._unbind(DEST)  # after an unbind, the next SUBSCRIBE binds again
    async with trio.open_nursery() as nursery:
        nursery.start_soon(subscribe)
        await trio.testing.wait_all_tasks_blocked()
        assert [command[0] for command in submitted] == ["bind", "unbind", "bind"]
        bridge.on_bound(routing_key(DEST), submitted[-1][2])  # type: ignore[arg-type]


async def test_the_queues_of_one_user_share_one_binding_held_while_any_has_a_subscriber() -> None:
    """After an instance restart its clients all come back, and each needed a RabbitMQ bind
    for every user queue it subscribes to (ack, error, receipts, ...) besides its session
    topic's; the binds were most of the cost of taking them back. A user's queues share one
    binding, bound on the first local subscriber of any of them, unbound after the last."""
    bridge = RabbitBridge(
        RabbitMQConfig(url="amqp://guest:guest@127.0.0.1:1/%2F", unbind_after_seconds=0),
        LocalDelivery(BrokerRuntime()),
    )
    bridge.connected = True
    submitted: list[tuple[object, ...]] = []
    bridge._link = SimpleNamespace(submit=submitted.append)  # type: ignore[assignment]
    ack, error, receipts = (
        user_key("alice@example.com", path)
        for path in ("/queue/ack", "/queue/error", "/queue/receipts")
    )
    key = binding_key(binding_destination(ack))
    bridge.destination_active(ack, True)
    bridge.destination_active(error, True)
    assert submitted == [("bind", key, 1)]
    bridge.on_bound(key, 1)
    with trio.fail_after(1):
        assert await bridge.ensure_bound(receipts)  # bound already: no wait, no bind
    bridge.release(receipts, subscribed=True)
    bridge.destination_active(receipts, True)
    bridge.destination_active(ack, False)
    bridge.destination_active(receipts, False)
    assert [c[0] for c in submitted] == ["bind"]  # /queue/error still has its subscriber
    assert bridge.bindings == 1
    bridge.destination_active(error, False)
    assert [c[:2] for c in submitted] == [("bind", key), ("unbind", key)]


async def test_a_users_binding_brings_that_users_queues_only_to_where_they_are_subscribed(
    pair: tuple[RabbitBridge, RabbitBridge, Peer],
) -> None:
    """With one binding per user, a message for a queue of the user that has no subscriber
    here arrives too: it must not be remembered as delivered (a republish may come once that
    queue has a subscriber), and another user's messages do not arrive at all."""
    sender, receiver, _ = pair
    alice_ack = user_key("alice@example.com", "/queue/ack")
    assert await receiver.ensure_bound(alice_ack)
    receiver.release(alice_ack, subscribed=True)
    receiver.destination_active(alice_ack, True)  # what the broker says on the SUBSCRIBE
    await sender.publish(
        [
            row(1, 1, user_key("alice@example.com", "/queue/receipts")),  # no subscriber here
            row(2, 1, user_key("bob@example.com", "/queue/ack")),  # not bound here
            row(3, 1, alice_ack),
        ]
    )
    await eventually(lambda: len(receiver.dedupe) == 1)  # row 3, the last, was delivered
    assert receiver.consumed == 2  # rows 1 and 3: bob's, queued before row 3, never came


async def test_every_consumed_batch_waiting_is_taken_in_one_turn_with_one_ack_per_channel(
    nursery: trio.Nursery,
) -> None:
    """Found by the soak: the thread hands over a few messages per socket read, and taking
    one batch a turn of trio's loop capped consumption at the loop's pace (a tenth of a
    second a turn with 1 500 sessions): the instances' queues grew to 40 000 messages."""
    runtime = BrokerRuntime()
    bridge = RabbitBridge(RabbitMQConfig(url="amqp://unused/"), LocalDelivery(runtime))
    submitted: list[tuple[object, ...]] = []
    bridge._link = SimpleNamespace(submit=submitted.append)  # type: ignore[assignment]
    nursery.start_soon(bridge._consume)
    await trio.testing.wait_all_tasks_blocked()
    old, new = object(), object()  # a reconnect between batches: two channels
    for tag in range(1, 61):
        m = Incoming(f"row-{tag}", DEST, "message", str(uuid.UUID(int=7)), tag, b"{}")
        bridge.on_messages([m], ("ack", old if tag <= 20 else new, tag))
    for _ in range(3):  # the consumer's task runs at most once or twice meanwhile
        await trio.lowlevel.cancel_shielded_checkpoint()
    assert bridge.consumed == 60
    assert submitted == [("ack", old, 20), ("ack", new, 60)]
