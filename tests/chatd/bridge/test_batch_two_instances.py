"""Batch sends across two real ``chatd serve`` processes relaying through RabbitMQ: a
subscriber on the other instance gets every message once, in per-session seq order, each
batch contiguous, while singles from that instance go into the same session meanwhile."""

from __future__ import annotations

import pytest
import trio

from .conftest import ALICE, BOB, Cluster, recorder

pytestmark = pytest.mark.timeout(120)


def items(tag: str, n: int) -> list[dict[str, str]]:
    return [{"content": f"{tag} {i}", "clientMessageId": f"{tag}-{i}"} for i in range(n)]


async def test_batches_reach_a_subscriber_on_the_other_instance_in_order(
    cluster: Cluster, nursery: trio.Nursery
) -> None:
    # a loaded test machine must not turn this into an overload test (busy refusals)
    patient = {"CHATD_LIMITS__MAX_SEND_WAIT_MS": "10000"}
    a = await cluster.add(**patient)
    b = await cluster.add(**patient)
    sid = await cluster.init(a)
    bob = await recorder(nursery, cluster, b, BOB)
    await bob.subscribe(f"/topic/session.{sid}", "topic")
    alice = await recorder(nursery, cluster, a, ALICE)
    await alice.subscribe("/user/queue/ack", "ack")
    sizes = {f"rest{k}": 10 + k for k in range(4)}

    async def rest_batch(tag: str) -> None:
        answer = await cluster.client.post(
            f"{a.http}/api/chat/messages",
            headers=cluster.auth(ALICE),
            json={"sessionId": sid, "messages": items(tag, sizes[tag])},
        )
        assert answer.status_code == 201, answer.text

    async def singles() -> None:
        for i in range(10):
            answer = await cluster.send(b, sid, f"single {i}", f"single-{i}", caller=BOB)
            assert answer.status_code == 201, answer.text

    async with trio.open_nursery() as senders:
        for tag in sizes:
            senders.start_soon(rest_batch, tag)
        senders.start_soon(singles)
        for k in range(3):
            await alice.send_json(
                "/app/chat.send-batch", {"sessionId": sid, "messages": items(f"stomp{k}", 20)}
            )
    await alice.wait(lambda: len(alice.frames.get("ack", [])) == 3)
    # a last message after them all: it reaches Bob after everything before it (per-session
    # order), so once it is there a duplicate of those would have been too
    answer = await cluster.send(a, sid, "last", "last")
    assert answer.status_code == 201, answer.text
    await bob.wait(lambda: any(m.get("content") == "last" for m in bob.bodies("topic")))
    total = sum(sizes.values()) + 10 + 60 + 1
    bodies = bob.bodies("topic")
    assert [m["seq"] for m in bodies] == list(range(1, total + 1))
    for tag, n in {**sizes, **{f"stomp{k}": 20 for k in range(3)}}.items():
        seqs = [m["seq"] for m in bodies if m["clientMessageId"].startswith(f"{tag}-")]
        assert len(seqs) == n
        assert seqs == list(range(seqs[0], seqs[0] + n)), tag  # contiguous, in array order
        assert [m["content"] for m in bodies if m["seq"] in seqs] == [
            f"{tag} {i}" for i in range(n)
        ]
