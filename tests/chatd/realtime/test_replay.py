"""Gap recovery: SUBSCRIBE with `x-since-seq` while messages keep arriving.

Several stomp.py subscribers join at different moments of a stream of sends; each must see
exactly the seqs after its `x-since-seq`, in order, once — the replayed part from the store,
the rest live through the outbox publisher.
"""

from __future__ import annotations

import json

import pytest
import trio

from .conftest import ALICE, BOB, Chat, StompPy, run, stomppy_client

pytestmark = pytest.mark.timeout(90)

BEFORE = 20  # messages stored and delivered before anyone replays
DURING = 120  # messages sent while the subscribers join, one every few milliseconds


def collect(client: StompPy, sub: str, last: int) -> list[int]:
    """The seqs of `sub`'s messages until seq `last` arrives (blocking)."""
    seqs: list[int] = []
    while not seqs or seqs[-1] < last:
        frame = client.message(sub)
        assert frame.headers["event"] == "message"
        seqs.append(json.loads(frame.body)["seq"])
        assert int(frame.headers["x-seq"]) == seqs[-1]
    return seqs


async def test_since_seq_replays_then_goes_live_without_gap_or_duplicate(chat: Chat) -> None:
    sid = await chat.init()
    watcher = await stomppy_client(chat, ALICE)
    inbox = await run(watcher.subscribe, "/user/queue/messages")
    for n in range(1, BEFORE + 1):
        await chat.send(sid, f"before {n}", f"b-{n}")
    assert (await run(collect, watcher, inbox, BEFORE))[-1] == BEFORE  # publisher caught up

    # (after which send to join, x-since-seq): some far behind, some right behind the head.
    joins = [(at, [0, 5, BEFORE + at - 3][i % 3]) for i, at in enumerate(range(8, DURING, 12))]
    joined: list[tuple[StompPy, str, int]] = []
    total = BEFORE + DURING

    async def sender() -> None:
        for n in range(1, DURING + 1):
            await chat.send(sid, f"during {n}", f"d-{n}", caller=ALICE if n % 2 else BOB)
            for at, since in joins:
                if n == at:
                    nursery.start_soon(join, since)
            await trio.sleep(0.002)

    async def join(since: int) -> None:
        client = await stomppy_client(chat, BOB)
        sub = await run(client.subscribe, f"/topic/session.{sid}", **{"x-since-seq": str(since)})
        joined.append((client, sub, since))

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender)
    assert len(joined) == len(joins)
    for client, sub, since in joined:
        seqs = await run(collect, client, sub, total)
        assert seqs == list(range(since + 1, total + 1)), f"since {since}"
        await run(client.nothing, sub, 0.2)
        await run(client.close)
    await run(watcher.close)


async def test_since_seq_at_the_end_replays_nothing_and_goes_live(sqlite_chat: Chat) -> None:
    chat = sqlite_chat
    sid = await chat.init()
    for n in range(1, 4):
        await chat.send(sid, f"m {n}", f"m-{n}")
    bob = await stomppy_client(chat, BOB)
    sub = await run(bob.subscribe, f"/topic/session.{sid}", **{"x-since-seq": "3"})
    await run(bob.nothing, sub, 0.5)
    await chat.send(sid, "m 4", "m-4")
    assert await run(collect, bob, sub, 4) == [4]
    await run(bob.close)
