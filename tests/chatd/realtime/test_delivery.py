"""`LocalDelivery` and the replay bound, below the HTTP layer: the chatd runtime from
`build_runtime` served over raw STOMP TCP, fed with rows claimed from a real SQLite store."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trio

from chatd.auth.tokens import TokenVerifier, mint_token
from chatd.config import Config, LimitsConfig
from chatd.domain.models import OutboxRow
from chatd.profiles import LocalProfileProvider
from chatd.realtime import ChatHooks, LocalDelivery, build_runtime
from chatd.realtime.handlers import AppHandlers
from chatd.services import ChatService
from chatd.storage import Store, open_store
from stomp import Frame
from stomp.trio import BrokerRuntime, serve_tcp

from ...stomp.stomp_peer import Peer
from .conftest import ALICE, BOB

pytestmark = pytest.mark.timeout(30)


@dataclass
class Stack:
    store: Store
    services: ChatService
    runtime: BrokerRuntime
    delivery: LocalDelivery
    address: tuple[str, int]
    private_key: bytes

    async def peer(self, email: str) -> Peer:
        stream = await trio.open_tcp_stream(*self.address)
        peer = Peer(stream)
        await peer.connect(Authorization=f"Bearer {mint_token(self.private_key, email)}")
        return peer

    async def claim(self) -> list[OutboxRow]:
        return await self.store.claim_outbox(limit=1000, lease_seconds=30, now=datetime.now(UTC))

    async def publish_pending(self) -> None:
        """What the outbox publisher does, once: claim, publish, mark sent."""
        rows = await self.claim()
        await self.delivery.publish(rows)
        await self.store.mark_outbox_sent([r.id for r in rows], now=datetime.now(UTC))


@pytest.fixture
async def stack(
    nursery: trio.Nursery, tmp_path: Path, key_pair: tuple[bytes, Path]
) -> AsyncIterator[Stack]:
    async with open_store(f"sqlite:///{tmp_path / 'd.sqlite3'}") as store:
        await store.migrate()
        limits = LimitsConfig(send_burst=10_000, sends_per_second=10_000)
        services = ChatService(store, LocalProfileProvider(), limits=limits)
        verifier = TokenVerifier(key_pair[1].read_bytes())
        runtime = build_runtime(Config(limits=limits))
        delivery = LocalDelivery(runtime)
        runtime.hooks = ChatHooks(
            services, verifier, delivery, AppHandlers(services, runtime), max_replay=5
        )
        address = await nursery.start(serve_tcp, runtime, "127.0.0.1", 0)
        yield Stack(store, services, runtime, delivery, address, key_pair[0])
        nursery.cancel_scope.cancel()


async def subscribed(peer: Peer, destination: str, sub_id: str = "1", **headers: str) -> None:
    await peer.send(
        "SUBSCRIBE",
        {"destination": destination, "id": sub_id, "receipt": f"sub-{sub_id}", **headers},
    )
    frame = await peer.frame()
    assert (frame.command, frame.get("receipt-id")) == ("RECEIPT", f"sub-{sub_id}"), frame


async def messages(peer: Peer, count: int) -> list[Frame]:
    with trio.fail_after(5):
        return [await peer.frame() for _ in range(count)]


async def test_rows_become_messages_with_event_headers_and_topic_seqs_once(stack: Stack) -> None:
    chat = await stack.services.init_session(ALICE, BOB, "buy")
    topic = f"/topic/session.{chat.id}"
    bob = await stack.peer(BOB)
    await subscribed(bob, topic)
    await subscribed(bob, "/user/queue/messages", "2")
    for n in (1, 2):
        await stack.services.send(ALICE, chat.id, f"m{n}", f"c{n}")
    rows = await stack.claim()
    assert len(rows) == 6
    await stack.delivery.publish(rows)
    await stack.delivery.publish(rows)  # a publisher retry: the topic does not repeat a seq
    got = await messages(bob, 2 + 4)
    on_topic = [f for f in got if f.get("subscription") == "1"]
    assert [json.loads(f.body)["seq"] for f in on_topic] == [1, 2]
    assert all(
        f.get("event") == "message" and f.get("content-type") == "application/json" for f in got
    )
    assert stack.delivery.last_seq(chat.id) == 2


async def test_odd_rows_do_not_crash_the_sink(stack: Stack) -> None:
    chat = await stack.services.init_session(ALICE, BOB, "buy")
    bob = await stack.peer(BOB)
    await subscribed(bob, f"/topic/session.{chat.id}")
    assert await stack.claim() == []  # a fresh session has no rows
    base = OutboxRow(
        1,
        None,
        chat.id,
        7,
        "message",
        f"/topic/session.{chat.id}",
        "",
        0,
        datetime.now(UTC),
        None,
        datetime.now(UTC),
    )
    odd = [
        base,
        replace(base, id=2, seq=8, event="", payload="{}"),
        replace(base, id=3, seq=0, event="presence", payload='{"who":"x"}'),
    ]
    await stack.delivery.publish(odd)
    got = await messages(bob, 3)
    assert [(f.get("event"), f.body) for f in got] == [
        ("message", b"{}"),
        ("unknown", b"{}"),
        ("presence", b'{"who":"x"}'),
    ]
    assert stack.delivery.last_seq(chat.id) == 7
    assert stack.delivery.last_seq(uuid.uuid4()) is None


async def test_replay_beyond_the_bound_is_refused_with_a_hint(stack: Stack) -> None:
    chat = await stack.services.init_session(ALICE, BOB, "buy")
    for n in range(1, 8):
        await stack.services.send(ALICE, chat.id, f"m{n}", f"c{n}")
    bob = await stack.peer(BOB)
    await bob.send(
        "SUBSCRIBE", {"destination": f"/topic/session.{chat.id}", "id": "1", "x-since-seq": "1"}
    )
    frames = await bob.frames_until_eof()
    assert frames[-1].command == "ERROR"
    assert (frames[-1].get("message") or "").startswith("too many messages to replay")
    assert b"/api/chat/history" in frames[-1].body
    # Within the bound: seeded from the store (nothing published yet), replayed, and the
    # pending outbox rows are then not published to the topic a second time.
    bob = await stack.peer(BOB)
    await bob.send(
        "SUBSCRIBE",
        {"destination": f"/topic/session.{chat.id}", "id": "1", "x-since-seq": "3", "receipt": "r"},
    )
    got = await messages(bob, 5)
    assert [json.loads(f.body)["seq"] for f in got[:4]] == [4, 5, 6, 7]
    assert got[4].get("receipt-id") == "r"
    await stack.publish_pending()
    await stack.services.send(ALICE, chat.id, "m8", "c8")
    await stack.publish_pending()
    [live] = await messages(bob, 1)
    assert json.loads(live.body)["seq"] == 8
