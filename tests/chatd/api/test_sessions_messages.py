"""REST: init, send (idempotency, limits), history paging — over PostgreSQL and SQLite."""

from __future__ import annotations

import uuid

import pytest
import trio

from chatd.config import LimitsConfig
from chatd.domain.models import Participant
from chatd.storage.base import append_one
from tests.chatd.api.conftest import (
    ALICE,
    BOB,
    CAROL,
    UNKNOWN,
    assert_error,
    init_session,
    send,
)


async def test_init_same_session_both_directions_and_per_intent(server, auth) -> None:
    first = await server.client.post(
        "/api/chat/init", json={"toEmail": BOB, "intent": "buy"}, headers=auth(ALICE)
    )
    assert first.status_code == 200
    body = first.json()
    assert list(body) == ["sessionId", "intent", "participants", "createdAt", "encrypted"]
    assert body["intent"] == "buy"
    assert body["encrypted"] is False
    assert sorted(p["email"] for p in body["participants"]) == [ALICE, BOB]
    assert all(set(p) == {"profileId", "email", "displayName"} for p in body["participants"])

    back = await init_session(server, auth, BOB, ALICE, "buy")
    again = await server.client.post(  # fromEmail naming the caller is accepted
        "/api/chat/init",
        json={"toEmail": " Bob@Example.com ", "intent": "buy", "fromEmail": ALICE},
        headers=auth(ALICE),
    )
    other_intent = await init_session(server, auth, ALICE, BOB, "rent")
    assert back == again.json()["sessionId"] == body["sessionId"]
    assert other_intent != body["sessionId"]


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        ({"toEmail": BOB, "intent": "buy", "fromEmail": CAROL}, 403),
        ({"toEmail": ALICE, "intent": "buy"}, 400),
        ({"toEmail": "not-an-email", "intent": "buy"}, 400),
        ({"intent": "buy"}, 400),
        ({"toEmail": BOB}, 400),
        ({"toEmail": BOB, "intent": "has space"}, 400),
        ({"toEmail": BOB, "intent": 7}, 400),
        ({"toEmail": UNKNOWN, "intent": "buy"}, 404),
    ],
)
async def test_init_refusals(sqlite_server, auth, payload, status) -> None:
    answer = await sqlite_server.client.post("/api/chat/init", json=payload, headers=auth(ALICE))
    assert_error(answer, status)


async def test_send_and_idempotent_repeat(server, auth) -> None:
    sid = await init_session(server, auth)
    created = await send(server, auth, sid, "hello", "c-1")
    assert created.status_code == 201
    message = created.json()
    assert list(message) == [
        "messageId",
        "sessionId",
        "seq",
        "senderId",
        "senderEmail",
        "senderDisplayName",
        "content",
        "clientMessageId",
        "sentAt",
        "delivered",
        "seen",
        "deliveredAt",
        "seenAt",
    ]
    assert (message["seq"], message["senderEmail"], message["content"]) == (1, ALICE, "hello")
    assert message["sentAt"] == "2030-01-01T12:00:00.000000Z"  # the injected clock

    repeat = await send(server, auth, sid, "different text, same id", "c-1")
    assert repeat.status_code == 200
    assert repeat.json() == message
    # The same clientMessageId from another sender is another message.
    theirs = await send(server, auth, sid, "hi", "c-1", caller=BOB)
    assert theirs.status_code == 201
    assert theirs.json()["seq"] == 2

    other = await init_session(server, auth, ALICE, CAROL)
    assert_error(await send(server, auth, other, "x", "c-1"), 400)  # id used in another session


@pytest.mark.parametrize(
    ("sid", "content", "cmid", "status"),
    [
        ("not-a-uuid", "x", "c", 400),
        (None, "x", "c", 400),
        (str(uuid.UUID(int=1)), "x", "c", 404),
        ("SESSION", "", "c", 400),
        ("SESSION", "   ", "c", 400),
        ("SESSION", 42, "c", 400),
        ("SESSION", "x", "", 400),
        ("SESSION", "x", None, 400),
        ("SESSION", "x", "c" * 101, 400),
        ("SESSION", "x" * 4001, "c", 413),
    ],
)
async def test_send_refusals(sqlite_server, auth, sid, content, cmid, status) -> None:
    real = await init_session(sqlite_server, auth)
    payload = {
        "sessionId": real if sid == "SESSION" else sid,
        "content": content,
        "clientMessageId": cmid,
    }
    answer = await sqlite_server.client.post("/api/chat/message", json=payload, headers=auth(ALICE))
    assert_error(answer, status)


@pytest.mark.parametrize("limits", [LimitsConfig(send_burst=3, sends_per_second=0.5)])
async def test_rate_limit_429_with_retry_after_and_repeats_still_answered(
    sqlite_server, auth, clock
) -> None:
    sid = await init_session(sqlite_server, auth)
    for i in range(3):
        assert (await send(sqlite_server, auth, sid, f"m{i}", f"c{i}")).status_code == 201
    limited = await send(sqlite_server, auth, sid, "one too many", "c3")
    assert_error(limited, 429)
    assert limited.headers["Retry-After"] == "2"  # 1 token at 0.5/s
    repeat = await send(sqlite_server, auth, sid, "m0", "c0")  # idempotent: before the limit
    assert repeat.status_code == 200
    assert repeat.json()["seq"] == 1
    clock.advance(2)
    assert (await send(sqlite_server, auth, sid, "now ok", "c3")).status_code == 201


@pytest.mark.parametrize("limits", [LimitsConfig(send_burst=2, sends_per_second=0.01)])
async def test_repeats_do_not_use_up_the_rate_limit(server, auth) -> None:
    sid = await init_session(server, auth)
    assert (await send(server, auth, sid, "first", "c0")).status_code == 201
    for _ in range(3):  # retries of a send whose answer was lost
        assert (await send(server, auth, sid, "first", "c0")).status_code == 200
    assert (await send(server, auth, sid, "second", "c1")).status_code == 201
    assert_error(await send(server, auth, sid, "third", "c2"), 429)


@pytest.mark.parametrize("limits", [LimitsConfig(identical_content=2)])
async def test_identical_content_limit(sqlite_server, auth) -> None:
    sid = await init_session(sqlite_server, auth)
    for i in range(2):
        assert (await send(sqlite_server, auth, sid, "same", f"c{i}")).status_code == 201
    answer = await send(sqlite_server, auth, sid, "same", "c2")
    assert_error(answer, 429)
    assert int(answer.headers["Retry-After"]) >= 1


async def test_concurrent_duplicate_sends_store_one_row(server, auth) -> None:
    sid = await init_session(server, auth)
    answers = []

    async def one() -> None:
        answers.append(await send(server, auth, sid, "once", "dup"))

    async with trio.open_nursery() as nursery:
        for _ in range(8):
            nursery.start_soon(one)
    codes = sorted(a.status_code for a in answers)
    assert codes == [200] * 7 + [201]
    assert len({a.json()["messageId"] for a in answers}) == 1
    history = await server.client.get(f"/api/chat/{sid}/history", headers=auth(ALICE))
    assert [m["clientMessageId"] for m in history.json()] == ["dup"]


async def test_seq_has_no_gaps_under_50_concurrent_senders(server, auth) -> None:
    sid = await init_session(server, auth)

    async def one(i: int) -> None:
        answer = await send(server, auth, sid, f"m{i}", f"c{i}", caller=(ALICE, BOB)[i % 2])
        assert answer.status_code == 201, answer.text

    async with trio.open_nursery() as nursery:
        for i in range(50):
            nursery.start_soon(one, i)
    history = await server.client.get(f"/api/chat/{sid}/history?limit=200", headers=auth(BOB))
    assert [m["seq"] for m in history.json()] == list(range(50, 0, -1))


async def test_history_walk_of_1000_messages_before_and_after(server, auth, clock) -> None:
    sid = await init_session(server, auth)
    session = await server.service.require_participant(ALICE, sid)
    sender: Participant = session.participant(ALICE)
    for i in range(1000):
        await append_one(server.store, session.id, sender, f"m{i + 1}", f"c{i}", clock())

    seen: list[int] = []
    cursor = None
    while True:
        query = {"limit": 37} | ({"before": cursor} if cursor else {})
        page = (
            await server.client.get(f"/api/chat/history/{sid}", params=query, headers=auth(BOB))
        ).json()
        if not page:
            break
        seqs = [m["seq"] for m in page]
        assert seqs == sorted(seqs, reverse=True)
        seen += seqs
        cursor = seqs[-1]
    assert seen == list(range(1000, 0, -1))

    forward: list[int] = []
    after = 0
    while True:
        page = (
            await server.client.get(
                f"/api/chat/{sid}/history",
                params={"limit": 200, "after": after},
                headers=auth(ALICE),
            )
        ).json()
        if not page:
            break
        seqs = [m["seq"] for m in page]
        assert seqs == list(range(after + len(seqs), after, -1))  # newest first, right after
        forward += reversed(seqs)
        after = seqs[0]
    assert forward == list(range(1, 1001))

    default = await server.client.get(f"/api/chat/{sid}/history", headers=auth(ALICE))
    assert [m["seq"] for m in default.json()] == list(range(1000, 950, -1))
    clamped = await server.client.get(f"/api/chat/{sid}/history?limit=5000", headers=auth(ALICE))
    assert len(clamped.json()) == 200
    ranged = await server.client.get(
        f"/api/chat/{sid}/history?after=10&before=15", headers=auth(ALICE)
    )
    assert [m["seq"] for m in ranged.json()] == [14, 13, 12, 11]


@pytest.mark.parametrize(
    "query", ["limit=0", "limit=-1", "limit=abc", "before=-1", "after=x", "before=1.5"]
)
async def test_history_bad_query(sqlite_server, auth, query) -> None:
    sid = await init_session(sqlite_server, auth)
    answer = await sqlite_server.client.get(f"/api/chat/{sid}/history?{query}", headers=auth(ALICE))
    assert_error(answer, 400)
