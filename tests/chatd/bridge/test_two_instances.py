"""Two real ``chatd serve`` processes relaying through RabbitMQ (docs/architecture.md, Two instances): a user on A and a
user on B chat over REST and ``/app/chat.send`` and both receive everything, on the session
topic and on their user queues; receipts cross instances; bindings follow local subscribers."""

from __future__ import annotations

import json

import pytest
import trio

from chatd.bridge import routing_key
from chatd.bridge.keys import binding_destination, binding_key

from .conftest import ALICE, BOB, Cluster, bindings, eventually, rabbitmqctl, recorder

pytestmark = pytest.mark.timeout(120)


async def test_users_on_two_instances_chat_over_rest_and_stomp(
    cluster: Cluster, nursery: trio.Nursery
) -> None:
    a = await cluster.add()
    b = await cluster.add()
    sid = await cluster.init(a)
    alice = await recorder(nursery, cluster, a, ALICE)
    bob = await recorder(nursery, cluster, b, BOB)
    for rec in (alice, bob):
        await rec.subscribe(f"/topic/session.{sid}", "topic")
        await rec.subscribe("/user/queue/messages", "inbox")
        await rec.subscribe("/user/queue/receipts", "receipts")
    await alice.subscribe("/user/queue/ack", "ack")
    alice_on_b = await recorder(nursery, cluster, b, ALICE)  # Alice's second connection
    await alice_on_b.subscribe("/user/queue/ack", "ack")

    # REST on either instance, and STOMP sends on A
    for i in range(5):
        sender, inst = (ALICE, b) if i % 2 else (BOB, a)
        answer = await cluster.send(inst, sid, f"rest {i}", f"r{i}", caller=sender)
        assert answer.status_code == 201, answer.text
    for i in range(5):
        await alice.send_json(
            "/app/chat.send",
            {"sessionId": sid, "content": f"stomp {i}", "clientMessageId": f"s{i}"},
        )
    await alice.wait(lambda: len(alice.frames.get("ack", [])) == 5)

    # a last message after them: each subscription gets it after everything sent before it
    # (per-session order), so once it is there a duplicate of those would have been too
    answer = await cluster.send(a, sid, "last", "last", caller=BOB)
    assert answer.status_code == 201, answer.text
    want = [f"rest {i}" for i in range(5)] + [f"stomp {i}" for i in range(5)] + ["last"]
    for rec in (alice, bob):
        for sub in ("topic", "inbox"):
            await rec.wait(
                lambda rec=rec, sub=sub: any(m.get("content") == "last" for m in rec.bodies(sub))
            )
            bodies = rec.bodies(sub)
            assert [m["content"] for m in bodies] == want, sub
            assert [m["seq"] for m in bodies] == list(range(1, 12)), sub

    # a receipt made on B (Bob read everything) reaches Alice's receipt queue on A
    answer = await cluster.client.post(
        f"{b.http}/api/chat/{sid}/seen", headers=cluster.auth(BOB), json={"upToSeq": 11}
    )
    assert answer.status_code == 200, answer.text
    await alice.wait(lambda: len(alice.frames.get("receipts", [])) >= 1)
    receipt = alice.bodies("receipts")[0]
    assert (receipt["readerEmail"], receipt["status"], receipt["upToSeq"]) == (BOB, "seen", 11)
    await bob.wait(lambda: any(f.get("event") == "receipt" for f in bob.frames.get("topic", [])))

    # unstored events cross too: the acks of Alice's STOMP sends reach her connection on B,
    # and her typing on A reaches Bob's topic subscription on B
    await alice_on_b.wait(lambda: len(alice_on_b.frames.get("ack", [])) == 5)
    assert [m["clientMessageId"] for m in alice_on_b.bodies("ack")] == [f"s{i}" for i in range(5)]
    await alice.send_json("/app/chat.typing", {"sessionId": sid})
    await bob.wait(lambda: any(f.get("event") == "typing" for f in bob.frames["topic"]))
    typing = [f for f in bob.frames["topic"] if f.get("event") == "typing"]
    assert len(typing) == 1
    assert json.loads(typing[0].body) == {"sessionId": sid, "email": ALICE}
    # A's own typing must not come back to it through RabbitMQ: a message Alice sends after
    # it through the same link reaches her topic subscription after any such echo would
    await alice.send_json(
        "/app/chat.send", {"sessionId": sid, "content": "after typing", "clientMessageId": "t"}
    )
    await alice.wait(
        lambda: any(
            m.get("content") == "after typing" for m in alice.bodies("topic") if "content" in m
        )
    )
    assert len([f for f in alice.frames["topic"] if f.get("event") == "typing"]) == 1  # once

    # both instances export the bridge on /metrics: connected, and confirm times observed
    for inst in (a, b):
        scraped = (await cluster.client.get(f"{inst.http}/metrics")).text
        assert "\nchatd_bridge_connected 1.0\n" in scraped
    scraped = (await cluster.client.get(f"{a.http}/metrics")).text + (
        await cluster.client.get(f"{b.http}/metrics")
    ).text
    counts = [
        float(line.split()[-1])
        for line in scraped.splitlines()
        if line.startswith("chatd_bridge_confirm_latency_seconds_count")
    ]
    assert len(counts) == 2
    assert sum(counts) >= 1


async def test_bindings_follow_local_subscribers(
    cluster: Cluster, vhost: str, nursery: trio.Nursery
) -> None:
    a = await cluster.add()
    # a binding outlives its last subscriber this long (for clients that come back)
    b = await cluster.add(CHATD_RABBITMQ__UNBIND_AFTER_SECONDS="3")
    sid = await cluster.init(a)
    topic_key = routing_key(f"/topic/session.{sid}")
    bob_key = binding_key(binding_destination(f"user:{BOB}:/queue/messages"))  # all his queues
    assert not {topic_key, bob_key} & bindings(vhost)

    first = await recorder(nursery, cluster, b, BOB)
    second = await recorder(nursery, cluster, b, BOB)
    await first.subscribe(f"/topic/session.{sid}", "t")
    await second.subscribe(f"/topic/session.{sid}", "t")
    await first.subscribe("/user/queue/messages", "q")
    assert {topic_key, bob_key} <= bindings(vhost)  # active once the RECEIPT came

    await first.unsubscribe("t")
    assert topic_key in bindings(vhost)  # the second subscriber still needs it
    await second.unsubscribe("t")
    await first.unsubscribe("q")
    left = trio.current_time()
    still = bindings(vhost)
    if trio.current_time() - left < 2.5:  # rabbitmqctl answered within the grace
        assert {topic_key, bob_key} <= still

    await eventually(lambda: not {topic_key, bob_key} & bindings(vhost))

    # the binding is gone, and so is the traffic: a new message reaches nobody on B. Alice's
    # inbox on B gets it after its topic row (one publish round, in row order), so once it is
    # there the topic row would have arrived too, had it been bound.
    alice_on_b = await recorder(nursery, cluster, b, ALICE)
    await alice_on_b.subscribe("/user/queue/messages", "inbox")
    answer = await cluster.send(a, sid, "after", "after-1")
    assert answer.status_code == 201
    await alice_on_b.wait(lambda: len(alice_on_b.frames.get("inbox", [])) == 1)
    assert len(first.frames.get("t", [])) == 0
    # ...until someone subscribes again, with history replay from the store
    await first.peer.send(
        "SUBSCRIBE",
        {
            "destination": f"/topic/session.{sid}",
            "id": "t2",
            "x-since-seq": "0",
            "receipt": "sub-t2",
        },
    )
    await first.wait(lambda: "sub-t2" in first.receipts)
    assert [m["content"] for m in first.bodies("t2")] == ["after"]
    answer = await cluster.send(a, sid, "live", "live-1")
    await first.wait(lambda: len(first.frames.get("t2", [])) == 2)
    assert [m["content"] for m in first.bodies("t2")] == ["after", "live"]

    # a clean stop deletes the instance's queue (a killed one's would expire)
    assert len(instance_queues(vhost)) == 2
    b.stop()
    assert len(instance_queues(vhost)) == 1


def instance_queues(vhost: str) -> list[str]:
    out = rabbitmqctl("list_queues", "-p", vhost, "-q", "--no-table-headers", "name")
    return [q for q in out.split() if q.startswith("chatd.instance.")]
