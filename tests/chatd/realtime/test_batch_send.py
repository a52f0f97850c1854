"""``SEND /app/chat.send-batch`` with stomp.py: one ack array after the commit, then the
receipt; every message still its own MESSAGE frame, in order; retries, refusals, strangers."""

from __future__ import annotations

import json
from typing import Any

import pytest

from .conftest import ALICE, BOB, CAROL, Chat, run, stomppy_client

pytestmark = pytest.mark.timeout(60)


def batch(sid: str, *cmids: str) -> dict[str, Any]:
    return {
        "sessionId": sid,
        "messages": [{"content": f"text {c}", "clientMessageId": c} for c in cmids],
    }


async def test_a_batch_is_acked_once_and_delivered_message_by_message_in_order(
    chat: Chat,
) -> None:
    sid = await chat.init()
    alice, bob = await stomppy_client(chat, ALICE), await stomppy_client(chat, BOB)
    try:
        ack = await run(alice.subscribe, "/user/queue/ack")
        topic = await run(bob.subscribe, f"/topic/session.{sid}")
        inbox = await run(bob.subscribe, "/user/queue/messages")
        await chat.send(sid, "first", "single-1", caller=BOB)
        cmids = [f"b-{i}" for i in range(5)]
        # the RECEIPT comes after the commit and after the ack: once it is here, so is the ack
        await run(alice.send, "/app/chat.send-batch", batch(sid, *cmids), receipt=True)
        frame = await run(alice.message, ack, 0.01)
        headers, answers = frame.headers, json.loads(frame.body)
        assert headers["event"] == "batch"
        assert headers["content-type"] == "application/json"
        assert [a["status"] for a in answers] == [201] * 5
        assert [(a["message"]["seq"], a["message"]["clientMessageId"]) for a in answers] == [
            (i + 2, c) for i, c in enumerate(cmids)
        ]
        for sub in (topic, inbox):
            frames = [await run(bob.message, sub) for _ in range(6)]
            assert [f.headers["event"] for f in frames] == ["message"] * 6
            assert [f.headers["x-seq"] for f in frames] == [str(s) for s in range(1, 7)]
        # a retry of the same batch: the originals, nothing stored or delivered again
        await run(alice.send, "/app/chat.send-batch", batch(sid, *cmids), receipt=True)
        _, again = await run(alice.json, ack)
        assert again == [{**a, "status": 200} for a in answers]
        # a later message is the barrier: any frame of the retry would have come before it
        await chat.send(sid, "after", "after-1", caller=BOB)
        headers, after = await run(bob.json, topic)
        assert (after["clientMessageId"], headers["x-seq"]) == ("after-1", "7")
        assert len(await chat.history(sid)) == 7
    finally:
        await run(alice.close)
        await run(bob.close)


@pytest.mark.parametrize(
    ("caller", "messages", "status", "reason"),
    [
        (
            ALICE,
            [
                {"content": "ok", "clientMessageId": "x-1"},
                {"content": " ", "clientMessageId": "x-2"},
            ],
            "BAD_REQUEST",
            "messages[1]: content must not be empty",
        ),
        (
            ALICE,
            [
                {"content": "a", "clientMessageId": "x-1"},
                {"content": "b", "clientMessageId": "x-1"},
            ],
            "BAD_REQUEST",
            "messages[1]: clientMessageId repeats messages[0]",
        ),
        (ALICE, "not a list", "BAD_REQUEST", "messages must be an array"),
        (CAROL, [{"content": "hi", "clientMessageId": "x-1"}], "FORBIDDEN", "not a participant"),
    ],
)
async def test_refusals_go_to_the_error_queue_whole_and_the_session_lives_on(
    sqlite_chat: Chat,
    caller: str,
    messages: object,
    status: str,
    reason: str,
) -> None:
    chat = sqlite_chat
    sid = await chat.init()
    client = await stomppy_client(chat, caller)
    try:
        errors = await run(client.subscribe, "/user/queue/error")
        ack = await run(client.subscribe, "/user/queue/ack")
        await run(
            client.send,
            "/app/chat.send-batch",
            {"sessionId": sid, "messages": messages},
            receipt=True,
        )
        headers, error = await run(client.json, errors)
        assert headers["event"] == "error"
        assert error["status"] == status
        assert error["errorMsg"].startswith(reason)
        assert error["clientMessageId"] is None
        if isinstance(messages, list):
            assert error["clientMessageIds"] == [m["clientMessageId"] for m in messages]
        assert await chat.history(sid) == []
        # the session lives on; the next answer is this batch's, none came for the refused one
        await run(
            client.send,
            "/app/chat.send-batch",
            {"sessionId": sid, "messages": [{"content": "fine", "clientMessageId": "fine-1"}]},
        )
        if caller == CAROL:  # still a stranger
            assert (await run(client.json, errors))[1]["status"] == "FORBIDDEN"
        else:
            _, answers = await run(client.json, ack)
            assert [a["message"]["clientMessageId"] for a in answers] == ["fine-1"]
    finally:
        await run(client.close)
