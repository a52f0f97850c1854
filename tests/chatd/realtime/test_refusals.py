"""Every refusal is an ERROR frame with a `message` header, then the server closes (stomp.py
over `/ws`)."""

from __future__ import annotations

import json
import socket
from dataclasses import replace
from pathlib import Path

import pytest
import trio

from chatd.auth.tokens import mint_token
from chatd.config import RabbitMQConfig

from .conftest import (
    ALICE,
    BOB,
    CAROL,
    Chat,
    StompPy,
    chat_config,
    raw_ws_peer,
    run,
    start_chat,
    stomppy_client,
)

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("token", ["none", "garbage", "expired", "foreign key"])
async def test_connect_without_a_valid_token_is_refused(sqlite_chat: Chat, token: str) -> None:
    chat = sqlite_chat
    tokens = {
        "none": None,
        "garbage": "not.a.jwt",
        "expired": mint_token(chat.private_key, ALICE, ttl=-3600),
        "foreign key": mint_token(_other_key(), ALICE),
    }
    client = StompPy(chat, tokens[token])
    await run(client.connect, wait=False)
    error = await run(client.error)
    assert error.headers["message"] == "unauthenticated"
    assert not client.seen.connected.is_set()


def _other_key() -> bytes:
    from cryptography.hazmat.primitives import serialization

    from chatd.auth.keys import generate_private_key

    return generate_private_key().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.mark.parametrize(
    "destination",
    [
        "/topic/session.{foreign}",
        "/topic/session.00000000-0000-4000-8000-000000000000",
        "/topic/session.not-a-uuid",
        "/user/bob@example.com/queue/messages",
        "/user/queue/somebody-elses",
        "/queue/anything",
        "/topic/other",
    ],
)
async def test_subscribe_outside_what_the_caller_may_see_is_refused(
    sqlite_chat: Chat, destination: str
) -> None:
    chat = sqlite_chat
    foreign = await chat.init(BOB, CAROL)
    destination = destination.replace("{foreign}", foreign)
    alice = await stomppy_client(chat, ALICE)
    await run(alice.subscribe, destination, wait=False)
    error = await run(alice.error)
    assert destination in error.headers["message"]


@pytest.mark.parametrize(
    "destination",
    [
        "/topic/session.{own}",
        "/queue/x",
        "/user/bob@example.com/queue/messages",
        "/user/queue/messages",
        "/app/unknown",
    ],
)
async def test_send_outside_app_handlers_is_refused(sqlite_chat: Chat, destination: str) -> None:
    chat = sqlite_chat
    own = await chat.init()
    destination = destination.replace("{own}", own)
    bob = await stomppy_client(chat, BOB)
    inbox = await run(bob.subscribe, "/user/queue/messages")
    alice = await stomppy_client(chat, ALICE)
    await run(alice.send, destination, {"fake": True})
    error = await run(alice.error)
    assert error.headers["message"] == f"cannot send to {destination}"
    await run(bob.nothing, inbox)  # nothing was routed anywhere
    await run(bob.close)


async def test_replay_with_client_acks_or_a_bad_since_seq_is_refused(sqlite_chat: Chat) -> None:
    chat = sqlite_chat
    sid = await chat.init()
    for ack, since, needle in (("client", "0", "ack:auto"), ("auto", "-1", "x-since-seq")):
        alice = await stomppy_client(chat, ALICE)
        await run(
            alice.subscribe, f"/topic/session.{sid}", wait=False, ack=ack, **{"x-since-seq": since}
        )
        error = await run(alice.error)
        assert needle in error.headers["message"]


async def test_header_limit_comes_from_the_config(
    nursery: trio.Nursery, tmp_path: Path, key_pair: tuple[bytes, Path]
) -> None:
    base = chat_config(tmp_path, f"sqlite:///{tmp_path / 'chat.sqlite3'}", key_pair[1])
    config = replace(base, limits=replace(base.limits, stomp_max_headers=12))
    chat = await start_chat(nursery, config, key_pair[0])
    async with chat.client:
        sid = await chat.init()
        alice = await stomppy_client(chat, ALICE)
        few = {f"x-h{i}": "v" for i in range(4)}  # with id, destination, ack, receipt: 8
        await run(alice.subscribe, f"/topic/session.{sid}", **few)
        many = {f"x-h{i}": "v" for i in range(10)}
        await run(alice.subscribe, f"/topic/session.{sid}", wait=False, **many)
        error = await run(alice.error)
        assert error.headers["message"] == "too many headers"
    chat.scope.cancel()


@pytest.mark.parametrize("begin", [True, False], ids=["begun", "unknown transaction"])
async def test_an_app_send_in_a_transaction_is_refused_and_not_stored(
    sqlite_chat: Chat, begin: bool
) -> None:
    # /app SENDs act at once: they would ignore a later ABORT, so they are refused instead
    # (at the SEND: the ERROR closes the connection, so the client has no ABORT to send).
    chat = sqlite_chat
    sid = await chat.init()
    alice = await stomppy_client(chat, ALICE)
    if begin:
        await run(alice.conn.begin, "t1")
    body = json.dumps({"sessionId": sid, "content": "in a transaction", "clientMessageId": "t"})
    await run(
        alice.conn.send, "/app/chat.send", body, content_type="application/json", transaction="t1"
    )
    error = await run(alice.error)
    assert error.headers["message"] == "cannot send to /app/chat.send in a transaction"
    assert "transaction header" in error.body
    assert await chat.history(sid) == []


async def test_a_text_within_the_character_limit_fits_the_stomp_frame_limit(
    nursery: trio.Nursery, tmp_path: Path, key_pair: tuple[bytes, Path]
) -> None:
    # 6000 emoji escaped by json.dumps (stomp.py's client here) are 72 KB, more than the
    # configured 64 KiB frame limit: the frame limit is raised to fit any text the character
    # limit allows, as the REST body limit is; one character more is refused for its length.
    base = chat_config(tmp_path, f"sqlite:///{tmp_path / 'chat.sqlite3'}", key_pair[1])
    limit = 6000
    config = replace(
        base, limits=replace(base.limits, max_content_length=limit, stomp_max_frame_size=65_536)
    )
    chat = await start_chat(nursery, config, key_pair[0])
    async with chat.client:
        sid = await chat.init()
        alice = await stomppy_client(chat, ALICE)
        ack = await run(alice.subscribe, "/user/queue/ack")
        errors = await run(alice.subscribe, "/user/queue/error")
        for n, cmid in ((limit, "fits"), (limit + 1, "too long")):
            await run(
                alice.send,
                "/app/chat.send",
                {"sessionId": sid, "content": "\U0001f600" * n, "clientMessageId": cmid},
            )
        _, stored = await run(alice.json, ack)
        assert (stored["clientMessageId"], len(stored["content"])) == ("fits", limit)
        _, refused = await run(alice.json, errors)
        assert refused == {
            "clientMessageId": "too long",
            "status": "REQUEST_ENTITY_TOO_LARGE",
            "errorMsg": f"content is {limit + 1} characters long; the limit is {limit}",
        }
        await run(alice.close)
    chat.scope.cancel()


async def test_a_topic_subscribe_not_yet_bound_to_rabbitmq_is_refused(
    nursery: trio.Nursery, tmp_path: Path, key_pair: tuple[bytes, Path]
) -> None:
    """Found by the soak (issue 22): a session topic SUBSCRIBE whose RabbitMQ binding was not
    in place (RabbitMQ unreachable, or the bind slower than BIND_TIMEOUT after a restart)
    went ahead; what the other instances published until the bind landed passed this one
    by, a gap behind the x-since-seq replay that the client's next resume skipped. It is
    refused now (the client subscribes again); user queues, never gap-free, still go ahead."""
    with socket.socket() as probe:  # a port nothing listens on: RabbitMQ is unreachable
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
    config = replace(
        chat_config(tmp_path, f"sqlite:///{tmp_path / 'chat.sqlite3'}", key_pair[1]),
        rabbitmq=RabbitMQConfig(url=f"amqp://guest:guest@127.0.0.1:{dead}/%2F"),
    )
    chat = await start_chat(nursery, config, key_pair[0])
    async with chat.client:
        sid = await chat.init()
        peer, _ = await raw_ws_peer(nursery, chat)
        await peer.connect(passcode=chat.token(ALICE))
        await peer.subscribe("/user/queue/ack", "a")  # a RECEIPT: allowed
        await peer.send(
            "SUBSCRIBE",
            {"destination": f"/topic/session.{sid}", "id": "t", "x-since-seq": "0", "receipt": "t"},
        )
        refused = await peer.frame()
        assert refused.command == "ERROR", refused
        assert refused.get("message") == f"cannot subscribe to /topic/session.{sid}"
        assert b"subscribe again shortly" in refused.body
    chat.scope.cancel()
