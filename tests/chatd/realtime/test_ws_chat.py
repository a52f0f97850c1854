"""Two users on `/ws` with stomp.py: live delivery, `/app` handlers, receipts, typing, ping."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio
import trio_websocket

from stomp import Command, Frame, encode_frame

from ...stomp.stomp_peer import frames_per_message, receipt_burst
from .conftest import ALICE, BOB, Chat, StompPy, chat_config, run, start_chat, stomppy_client

pytestmark = pytest.mark.timeout(60)


def assert_event(headers: dict[str, str], event: str) -> None:
    assert headers["event"] == event
    assert headers["content-type"] == "application/json"


async def test_rest_send_reaches_both_users_on_topic_and_queue(chat: Chat) -> None:
    sid = await chat.init()
    alice, bob = await stomppy_client(chat, ALICE), await stomppy_client(chat, BOB)
    try:
        subs = {}
        for name, client in (("alice", alice), ("bob", bob)):
            subs[name] = (
                await run(client.subscribe, f"/topic/session.{sid}"),
                await run(client.subscribe, "/user/queue/messages"),
            )
        sent = await chat.send(sid, "hello bob", "c-1")
        for name, client in (("alice", alice), ("bob", bob)):
            for sub in subs[name]:
                headers, body = await run(client.json, sub)
                assert_event(headers, "message")
                assert body == sent
                assert headers["x-seq"] == "1"
    finally:
        await run(alice.close)
        await run(bob.close)


async def test_app_send_acks_with_client_message_id_and_duplicate_is_one_row(chat: Chat) -> None:
    sid = await chat.init()
    alice, bob = await stomppy_client(chat, ALICE), await stomppy_client(chat, BOB)
    try:
        ack = await run(alice.subscribe, "/user/queue/ack")
        errors = await run(alice.subscribe, "/user/queue/error")
        topic = await run(bob.subscribe, f"/topic/session.{sid}")
        frame = {"sessionId": sid, "content": "over stomp", "clientMessageId": "m-1"}
        await run(alice.send, "/app/chat.send", frame, receipt=True)
        # The receipt is answered only after the message is stored and acked.
        headers, first = await run(alice.json, ack)
        assert_event(headers, "message")
        assert (first["clientMessageId"], first["content"], first["seq"]) == (
            "m-1",
            "over stomp",
            1,
        )
        assert (await run(bob.json, topic))[1]["messageId"] == first["messageId"]

        await run(alice.send, "/app/chat.send", frame, receipt=True)
        assert (await run(alice.json, ack))[1]["messageId"] == first["messageId"]
        await run(alice.nothing, errors)
        await run(bob.nothing, topic)
        assert [m["messageId"] for m in await chat.history(sid)] == [first["messageId"]]
    finally:
        await run(alice.close)
        await run(bob.close)


@pytest.mark.parametrize(
    ("body", "status", "cmid"),
    [
        ("{not json", "BAD_REQUEST", None),
        ('["an", "array"]', "BAD_REQUEST", None),
        ({"sessionId": "nope", "content": "x", "clientMessageId": "e-1"}, "BAD_REQUEST", "e-1"),
        (
            {
                "sessionId": "00000000-0000-4000-8000-000000000000",
                "content": "x",
                "clientMessageId": "e-2",
            },
            "NOT_FOUND",
            "e-2",
        ),
        ({"sessionId": "SID", "content": "", "clientMessageId": "e-3"}, "BAD_REQUEST", "e-3"),
    ],
)
async def test_app_send_errors_go_to_the_error_queue_and_the_session_lives_on(
    sqlite_chat: Chat, body: object, status: str, cmid: str | None
) -> None:
    chat = sqlite_chat
    sid = await chat.init()
    if isinstance(body, dict) and body["sessionId"] == "SID":
        body = {**body, "sessionId": sid}
    alice = await stomppy_client(chat, ALICE)
    try:
        errors = await run(alice.subscribe, "/user/queue/error")
        await run(
            alice.send,
            "/app/chat.send",
            body if isinstance(body, str) else json.dumps(body),
            receipt=True,
        )
        headers, error = await run(alice.json, errors)
        assert headers["content-type"] == "application/json"
        assert error["status"] == status
        assert error["clientMessageId"] == cmid
        assert error["errorMsg"]
        await run(alice.send, "/app/ping", {"still": "alive"}, receipt=True)
    finally:
        await run(alice.close)


async def test_receipts_reach_the_sender_live(chat: Chat) -> None:
    sid = await chat.init()
    alice, bob = await stomppy_client(chat, ALICE), await stomppy_client(chat, BOB)
    try:
        receipts = await run(alice.subscribe, "/user/queue/receipts")
        topic = await run(alice.subscribe, f"/topic/session.{sid}")
        await chat.send(sid, "one", "r-1")
        await chat.send(sid, "two", "r-2")
        assert (await run(alice.json, topic))[1]["seq"] == 1
        assert (await run(alice.json, topic))[1]["seq"] == 2
        await run(bob.send, "/app/chat.delivered", {"sessionId": sid, "upToSeq": 1})
        await run(bob.send, "/app/chat.seen", {"sessionId": sid, "upToSeq": 2})
        for status, seq in (("delivered", 1), ("seen", 2)):
            headers, receipt = await run(alice.json, receipts)
            assert_event(headers, "receipt")
            assert (receipt["readerEmail"], receipt["status"], receipt["upToSeq"]) == (
                BOB,
                status,
                seq,
            )
            headers, on_topic = await run(alice.json, topic)
            assert_event(headers, "receipt")
            assert on_topic == receipt
        history = await chat.history(sid)
        assert all(m["seen"] and m["delivered"] for m in history)
    finally:
        await run(alice.close)
        await run(bob.close)


async def test_typing_reaches_the_other_participant_and_is_not_stored(sqlite_chat: Chat) -> None:
    chat = sqlite_chat
    sid = await chat.init()
    alice, bob = await stomppy_client(chat, ALICE), await stomppy_client(chat, BOB)
    try:
        topic = await run(bob.subscribe, f"/topic/session.{sid}")
        await run(alice.send, "/app/chat.typing", {"sessionId": sid}, receipt=True)
        headers, typing = await run(bob.json, topic)
        assert_event(headers, "typing")
        assert typing == {"sessionId": sid, "email": ALICE}
        assert await chat.history(sid) == []
    finally:
        await run(alice.close)
        await run(bob.close)


async def test_ping_answers_on_pong_and_passcode_and_query_tokens_work(sqlite_chat: Chat) -> None:
    chat = sqlite_chat
    by_passcode = StompPy(chat, chat.token(ALICE), passcode=True)
    by_query = StompPy(chat, None, path=f"/ws/websocket?access_token={chat.token(BOB)}")
    for client, who in ((by_passcode, ALICE), (by_query, BOB)):
        await run(client.connect)
        try:
            pong = await run(client.subscribe, "/user/queue/pong")
            await run(client.send, "/app/ping", {"n": who})
            headers, body = await run(client.json, pong)
            assert headers["event"] == "pong"
            assert body == {"n": who}
        finally:
            await run(client.close)


@pytest.mark.parametrize(
    ("one_frame_per_message", "shape"),
    [
        (False, [10]),  # the default: what is queued for the session goes in one message
        (True, [1] * 10),
    ],
)
@pytest.mark.parametrize("path", ["/ws", "/ws/websocket"])
async def test_ws_one_frame_per_message(
    nursery: trio.Nursery,
    tmp_path: Path,
    key_pair: tuple[bytes, Path],
    path: str,
    one_frame_per_message: bool,
    shape: list[int],
) -> None:
    """`[server] ws_one_frame_per_message`, for clients that parse one frame per message."""
    config = chat_config(
        tmp_path,
        f"sqlite:///{tmp_path / 'chat.sqlite3'}",
        key_pair[1],
        ws_one_frame_per_message=one_frame_per_message,
    )
    chat = await start_chat(nursery, config, key_pair[0])
    async with chat.client:
        ws = await trio_websocket.connect_websocket(
            nursery, "127.0.0.1", chat.port, path, use_ssl=False, subprotocols=["v12.stomp"]
        )
        connect = Frame(
            Command.CONNECT,
            (
                ("accept-version", "1.2"),
                ("host", "localhost"),
                ("Authorization", f"Bearer {chat.token(ALICE)}"),
            ),
        )
        await ws.send_message(encode_frame(connect))
        [[connected]] = await frames_per_message(ws.get_message, 1)
        assert connected.get("user-name") == ALICE
        await ws.send_message(receipt_burst(10))
        messages = await frames_per_message(ws.get_message, 10)
        assert list(map(len, messages)) == shape
        await ws.aclose()
    chat.scope.cancel()


@pytest.mark.parametrize(
    ("asked", "answered"),
    [
        ("1000,1000", "1000,1000"),  # honoured, as stompjs asks for 1 s to notice a dead server
        ("500,250", "1000,1000"),  # never faster than the [server] limit (1000 ms by default)
        ("20000,0", "0,20000"),
        ("0,0", "0,0"),
    ],
)
async def test_connect_gets_the_heartbeats_it_asks_for(
    nursery: trio.Nursery, sqlite_chat: Chat, asked: str, answered: str
) -> None:
    ws = await trio_websocket.connect_websocket(
        nursery, "127.0.0.1", sqlite_chat.port, "/ws", use_ssl=False, subprotocols=["v12.stomp"]
    )
    connect = Frame(
        Command.CONNECT,
        (
            ("accept-version", "1.2"),
            ("heart-beat", asked),
            ("Authorization", f"Bearer {sqlite_chat.token(ALICE)}"),
        ),
    )
    await ws.send_message(encode_frame(connect))
    [[connected]] = await frames_per_message(ws.get_message, 1)
    assert connected.get("heart-beat") == answered
    assert (connected.get("server") or "").startswith("chatd/")  # the app names itself
    await ws.aclose()
