"""STOMP and end-to-end encryption: envelopes over `/app/chat.send`, refusals on the error
queue, and key changes announced on `/user/queue/keys` (only to the owner's peers)."""

from __future__ import annotations

import pytest

from tests.chatd.e2e_support import encrypt, new_key, public_jwk, thumbprint

from .conftest import ALICE, BOB, CAROL, Chat, run, stomppy_client

pytestmark = pytest.mark.timeout(60)


async def init_encrypted(chat: Chat, caller: str = ALICE, peer: str = BOB) -> str:
    answer = await chat.client.post(
        "/api/chat/init",
        json={"toEmail": peer, "intent": "buy", "encrypted": True},
        headers=chat.auth(caller),
    )
    assert answer.status_code == 200, answer.text
    sid: str = answer.json()["sessionId"]
    return sid


async def test_envelopes_over_stomp_are_relayed_verbatim_and_text_is_refused(chat: Chat) -> None:
    sid = await init_encrypted(chat)
    alice, bob = await stomppy_client(chat, ALICE), await stomppy_client(chat, BOB)
    try:
        ack = await run(alice.subscribe, "/user/queue/ack")
        errors = await run(alice.subscribe, "/user/queue/error")
        topic = await run(bob.subscribe, f"/topic/session.{sid}")
        text = encrypt(new_key(), new_key().public_key(), sid, "over stomp, sealed")
        await run(
            alice.send,
            "/app/chat.send",
            {"sessionId": sid, "content": text, "clientMessageId": "s-1"},
            receipt=True,
        )
        assert (await run(alice.json, ack))[1]["content"] == text
        headers, body = await run(bob.json, topic)
        assert headers["event"] == "message"
        assert body["content"] == text

        await run(
            alice.send,
            "/app/chat.send",
            {"sessionId": sid, "content": "in clear", "clientMessageId": "s-2"},
            receipt=True,
        )
        _, error = await run(alice.json, errors)
        assert error["clientMessageId"] == "s-2"
        assert error["status"] == "BAD_REQUEST"
        assert "envelope" in error["errorMsg"]
        await run(bob.nothing, topic)
    finally:
        await run(alice.close)
        await run(bob.close)


async def test_key_changes_reach_peers_on_the_keys_queue_and_not_strangers(chat: Chat) -> None:
    await init_encrypted(chat)  # alice and bob share a session; carol shares none with alice
    bob, carol = await stomppy_client(chat, BOB), await stomppy_client(chat, CAROL)
    try:
        bob_keys = await run(bob.subscribe, "/user/queue/keys")
        carol_keys = await run(carol.subscribe, "/user/queue/keys")
        first, second = public_jwk(new_key()), public_jwk(new_key())
        for jwk in (first, second):
            answer = await chat.client.put(
                "/api/keys/me", json={"agreementKey": jwk}, headers=chat.auth(ALICE)
            )
            assert answer.status_code == 201, answer.text
        events = [await run(bob.json, bob_keys) for _ in range(2)]
        assert [h["event"] for h, _ in events] == ["keys", "keys"]
        assert [(b["email"], b["kid"], b["previousKid"]) for _, b in events] == [
            (ALICE, thumbprint(first), None),
            (ALICE, thumbprint(second), thumbprint(first)),
        ]
        await run(carol.nothing, carol_keys)
    finally:
        await run(bob.close)
        await run(carol.close)


async def test_another_users_keys_queue_cannot_be_named(sqlite_chat: Chat) -> None:
    carol = await stomppy_client(sqlite_chat, CAROL)
    try:
        await run(carol.subscribe, f"/user/{ALICE}/queue/keys", wait=False)
        frame = await run(carol.error)
        assert "cannot subscribe" in frame.headers["message"]
    finally:
        await run(carol.close)
