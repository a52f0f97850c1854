"""Presence end to end on one chatd (real sockets, real store): who learns what, in which order,
over which transports, and that strangers learn nothing."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trio

from chatd.config import PresenceConfig, RedisConfig
from stomp import Frame
from tests.conftest import PrivateRedis

from ...stomp.stomp_peer import Peer
from .conftest import ALICE, BOB, CAROL, Chat, chat_config, raw_ws_peer, start_chat

pytestmark = pytest.mark.timeout(60)

DAVE, ERIN = "dave@example.com", "erin@example.com"
PRESENCE = "/user/queue/presence"
GRACE = 0.3


async def running(
    nursery: trio.Nursery,
    tmp_path: Path,
    key_pair: tuple[bytes, Path],
    redis: RedisConfig | None = None,
    **presence: Any,
) -> Chat:
    config = chat_config(
        tmp_path,
        f"sqlite:///{tmp_path / 'chat.sqlite3'}",
        key_pair[1],
        stomp_tcp_bind="127.0.0.1:0",
    )
    config = replace(
        config, presence=PresenceConfig(**{"grace_seconds": GRACE, **presence}), redis=redis
    )
    return await start_chat(nursery, config, key_pair[0])


async def ws_user(nursery: trio.Nursery, chat: Chat, email: str) -> Peer:
    peer, _ = await raw_ws_peer(nursery, chat)
    await peer.connect(Authorization=f"Bearer {chat.token(email)}")
    return peer


async def tcp_user(chat: Chat, email: str) -> Peer:
    assert chat.tcp is not None
    peer = Peer(await trio.open_tcp_stream(*chat.tcp))
    await peer.connect(Authorization=f"Bearer {chat.token(email)}")
    return peer


def body(frame: Frame) -> dict[str, Any]:
    assert (frame.command, frame.get("event")) == ("MESSAGE", "presence"), frame
    parsed: dict[str, Any] = json.loads(frame.body)
    return parsed


async def nothing_before_a_receipt(peer: Peer) -> None:
    """The next frame `peer` gets is the RECEIPT of a ping sent now: nothing else was queued
    for it (frames to one session keep their order)."""
    await peer.send("SEND", {"destination": "/app/ping", "receipt": "nothing-else"}, b"{}")
    frame = await peer.frame()
    assert (frame.command, frame.get("receipt-id")) == ("RECEIPT", "nothing-else"), frame


async def presence_of(chat: Chat, caller: str, emails: str) -> list[dict[str, Any]]:
    answer = await chat.client.get(
        "/api/chat/presence", params={"emails": emails}, headers=chat.auth(caller)
    )
    assert answer.status_code == 200, answer.text
    found: list[dict[str, Any]] = answer.json()["presence"]
    return found


async def test_peers_see_each_other_come_and_go_strangers_see_nothing(
    nursery: trio.Nursery, tmp_path: Path, key_pair: tuple[bytes, Path]
) -> None:
    chat = await running(nursery, tmp_path, key_pair)
    async with chat.client:
        await chat.init(ALICE, BOB)
        await chat.init(CAROL, DAVE)
        alice = await ws_user(nursery, chat, ALICE)
        await alice.subscribe(PRESENCE)  # asserts the RECEIPT comes first
        snapshot = body(await alice.frame())
        assert snapshot == {"event": "presence", "email": BOB, "online": False, "lastSeen": None}

        bob = await tcp_user(chat, BOB)  # any transport counts
        assert body(await alice.frame())["online"] is True
        carol = await ws_user(nursery, chat, CAROL)  # a stranger to Alice and Bob

        await carol.subscribe(PRESENCE)
        assert body(await carol.frame()) == {
            "event": "presence",
            "email": DAVE,
            "online": False,
            "lastSeen": None,
        }
        assert [p["email"] for p in await presence_of(chat, CAROL, f"{ALICE},{BOB}")] == []
        assert await presence_of(chat, ALICE, f"{BOB},{CAROL},{DAVE}") == [
            {"email": BOB, "online": True, "lastSeen": None}
        ]
        listed = await chat.client.get("/api/chat/sessions", headers=chat.auth(ALICE))
        [session] = listed.json()["sessions"]
        peer = next(p for p in session["participants"] if p["email"] == BOB)
        me = next(p for p in session["participants"] if p["email"] == ALICE)
        assert (peer["online"], peer["lastSeen"]) == (True, None)
        assert "online" not in me

        await bob.stream.aclose()
        with trio.fail_after(GRACE + 1):
            gone = body(await alice.frame())  # carol's coming never reached Alice
        assert (gone["email"], gone["online"]) == (BOB, False)
        assert gone["lastSeen"] is not None
        await nothing_before_a_receipt(carol)  # a stranger learnt nothing of Bob or Alice
        [bob_now] = await presence_of(chat, ALICE, BOB)
        assert (bob_now["online"], bob_now["lastSeen"]) == (False, gone["lastSeen"])
        metrics = (await chat.client.get("/metrics")).text
        assert "chatd_presence_local_users 2.0" in metrics  # alice and carol
        # alice -> bob, bob -> alice (online), carol -> dave, bob -> alice (offline): one
        # instance alone cannot know who is connected elsewhere, so offline peers are told too
        assert "chatd_presence_updates_total 4.0" in metrics
    chat.scope.cancel()


async def test_reconnect_within_grace_is_not_seen(
    nursery: trio.Nursery, tmp_path: Path, key_pair: tuple[bytes, Path]
) -> None:
    chat = await running(nursery, tmp_path, key_pair, grace_seconds=30)
    async with chat.client:
        await chat.init(ALICE, BOB)
        await chat.init(ALICE, ERIN)
        bob = await ws_user(nursery, chat, BOB)
        alice = await ws_user(nursery, chat, ALICE)
        await alice.subscribe(PRESENCE)
        snapshot = [body(await alice.frame()) for _ in range(2)]
        assert {p["email"]: p["online"] for p in snapshot} == {BOB: True, ERIN: False}
        await bob.stream.aclose()
        bob = await tcp_user(chat, BOB)  # back at once, another transport
        await tcp_user(chat, ERIN)
        # Changes are announced in the order they happen: had Bob's flap been announced,
        # its offline would come before Erin's arrival (an announcement of Bob's first
        # arrival may still be on its way after the snapshot: it says online, like it).
        before_erin = []
        while (event := body(await alice.frame()))["email"] != ERIN:
            before_erin.append(event)
        assert all(e["email"] == BOB and e["online"] for e in before_erin), before_erin
        [bob_now] = await presence_of(chat, ALICE, BOB)
        assert bob_now["online"] is True
    chat.scope.cancel()


async def test_opening_a_chat_introduces_the_two_peers(
    nursery: trio.Nursery, tmp_path: Path, key_pair: tuple[bytes, Path]
) -> None:
    chat = await running(nursery, tmp_path, key_pair)
    async with chat.client:
        alice = await ws_user(nursery, chat, ALICE)
        bob = await tcp_user(chat, BOB)
        carol = await ws_user(nursery, chat, CAROL)
        for peer in (alice, bob, carol):
            await peer.subscribe(PRESENCE)  # no peers yet: an empty snapshot
        await chat.init(ALICE, BOB)
        assert body(await alice.frame())["email"] == BOB
        assert body(await bob.frame())["email"] == ALICE
        await nothing_before_a_receipt(carol)
    chat.scope.cancel()


async def test_disabled_publishes_and_answers_nothing(
    nursery: trio.Nursery, tmp_path: Path, key_pair: tuple[bytes, Path]
) -> None:
    chat = await running(nursery, tmp_path, key_pair, enabled=False)
    async with chat.client:
        await chat.init(ALICE, BOB)
        alice = await ws_user(nursery, chat, ALICE)
        await alice.subscribe(PRESENCE)  # allowed, so clients need no special case
        await tcp_user(chat, BOB)
        await nothing_before_a_receipt(alice)
        assert await presence_of(chat, ALICE, BOB) == []
        listed = await chat.client.get("/api/chat/sessions", headers=chat.auth(ALICE))
        assert all("online" not in p for p in listed.json()["sessions"][0]["participants"])
    chat.scope.cancel()


async def test_redis_down_presence_falls_back_to_this_instance(
    nursery: trio.Nursery, tmp_path: Path, key_pair: tuple[bytes, Path], private_redis: PrivateRedis
) -> None:
    redis = RedisConfig(url=private_redis.url, timeout=0.2, retry_initial_seconds=0.1)
    chat = await running(nursery, tmp_path, key_pair, redis=redis)
    async with chat.client:
        sid = await chat.init(ALICE, BOB)
        alice = await ws_user(nursery, chat, ALICE)
        await alice.subscribe(PRESENCE)
        assert body(await alice.frame())["online"] is False
        private_redis.kill()  # connects, sends and presence go on without it
        bob = await tcp_user(chat, BOB)
        assert body(await alice.frame())["online"] is True
        await chat.send(sid, "still here", "c1", caller=BOB)
        assert [p["online"] for p in await presence_of(chat, ALICE, BOB)] == [True]
        await bob.stream.aclose()
        with trio.fail_after(GRACE + 1):
            assert body(await alice.frame())["online"] is False
        ready = await chat.client.get("/health/ready")
        assert ready.status_code == 200
    chat.scope.cancel()


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ({}, 400),
        ({"emails": ""}, 400),
        ({"emails": "nope"}, 400),
        ({"emails": ",".join(f"u{i}@example.com" for i in range(101))}, 400),
    ],
)
async def test_presence_query_refuses_bad_input(
    sqlite_chat: Chat, query: dict[str, str], status: int
) -> None:
    answer = await sqlite_chat.client.get(
        "/api/chat/presence", params=query, headers=sqlite_chat.auth(ALICE)
    )
    assert answer.status_code == status
    assert answer.json()["status"] == "BAD_REQUEST"


async def test_presence_query_needs_a_token(sqlite_chat: Chat) -> None:
    answer = await sqlite_chat.client.get("/api/chat/presence", params={"emails": BOB})
    assert answer.status_code == 401
