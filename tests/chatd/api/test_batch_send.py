"""REST batch send, ``POST /api/chat/messages``: one transaction, contiguous seqs, per-item
answers, all or nothing, rate limits and who may send — over PostgreSQL and SQLite."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from chatd.config import LimitsConfig
from tests.chatd.api.conftest import ALICE, BOB, CAROL, assert_error, init_session, send


def items(*cmids: str, text: str = "m") -> list[dict[str, str]]:
    return [{"content": f"{text} {cmid}", "clientMessageId": cmid} for cmid in cmids]


async def send_batch(
    server, auth, sid: object, messages: object, caller: str = ALICE
) -> httpx.Response:
    return await server.client.post(
        "/api/chat/messages", json={"sessionId": sid, "messages": messages}, headers=auth(caller)
    )


async def history(server, auth, sid: str) -> list[dict[str, Any]]:
    answer = await server.client.get(f"/api/chat/{sid}/history", headers=auth(ALICE))
    assert answer.status_code == 200
    return list(reversed(answer.json()))


async def test_batch_is_stored_in_order_and_a_retry_answers_the_originals(server, auth) -> None:
    sid = await init_session(server, auth)
    assert (await send(server, auth, sid, "before", "s-0", caller=BOB)).status_code == 201
    created = await send_batch(server, auth, sid, items("b-1", "b-2", "b-3"))
    assert created.status_code == 201, created.text
    results = created.json()["results"]
    assert [r["status"] for r in results] == [201, 201, 201]
    assert [(r["message"]["seq"], r["message"]["clientMessageId"]) for r in results] == [
        (2, "b-1"),
        (3, "b-2"),
        (4, "b-3"),
    ]
    assert all(r["message"]["senderEmail"] == ALICE for r in results)

    again = await send_batch(server, auth, sid, items("b-1", "b-2", "b-3", text="changed"))
    assert again.status_code == 200  # nothing new
    assert [(r["status"], r["message"]) for r in again.json()["results"]] == [
        (200, r["message"]) for r in results
    ]

    # known ids with new ones: the new ones follow on, the known ones are answered as they were
    mixed = await send_batch(server, auth, sid, items("b-3", "b-4", "b-1", "b-5"))
    assert mixed.status_code == 201
    assert [(r["status"], r["message"]["seq"]) for r in mixed.json()["results"]] == [
        (200, 4),
        (201, 5),
        (200, 2),
        (201, 6),
    ]
    assert [m["clientMessageId"] for m in await history(server, auth, sid)] == [
        "s-0",
        "b-1",
        "b-2",
        "b-3",
        "b-4",
        "b-5",
    ]


@pytest.mark.parametrize("limits", [LimitsConfig(max_content_length=10, max_batch=3)])
@pytest.mark.parametrize(
    ("messages", "reason"),
    [
        (
            [*items("a", "b"), {"content": "x" * 11, "clientMessageId": "c"}],
            "messages[2]: content is 11 characters long; the limit is 10",
        ),
        (
            [*items("a"), {"content": "  ", "clientMessageId": "b"}],
            "messages[1]: content must not be empty",
        ),
        (items("a", "b", "a"), "messages[2]: clientMessageId repeats messages[0]"),
        ([*items("a"), {"content": "no id"}], "messages[1]: clientMessageId is required"),
        ([{"clientMessageId": "a"}], "messages[0]: content must be a string"),
        ([*items("a"), "text"], "messages[1]: must be an object"),
        (items("a", "b", "c", "d"), "messages holds 4 items; the limit is 3"),
        ([], "messages must not be empty"),
        ("a", "messages must be an array"),
        (None, "messages must be an array"),
    ],
)
async def test_one_bad_item_refuses_the_whole_batch(server, auth, messages, reason) -> None:
    sid = await init_session(server, auth)
    body = assert_error(await send_batch(server, auth, sid, messages), 400)
    assert body["errorMsg"].startswith(reason)
    assert await history(server, auth, sid) == []


async def test_a_client_id_used_in_another_session_refuses_the_batch(server, auth) -> None:
    sid, other = await init_session(server, auth), await init_session(server, auth, peer=CAROL)
    assert (await send(server, auth, other, "elsewhere", "x-1")).status_code == 201
    body = assert_error(await send_batch(server, auth, sid, items("n-1", "x-1", "n-2")), 400)
    assert body["errorMsg"] == "messages[1]: clientMessageId was already used in another session"
    assert await history(server, auth, sid) == []
    # and nothing was charged: the same batch without the bad id goes through whole
    answer = await send_batch(server, auth, sid, items("n-1", "n-2"))
    assert [r["message"]["seq"] for r in answer.json()["results"]] == [1, 2]


async def test_a_stranger_and_unknown_sessions_are_refused(server, auth) -> None:
    sid = await init_session(server, auth)
    assert_error(await send_batch(server, auth, sid, items("s-1"), caller=CAROL), 403)
    assert_error(
        await send_batch(server, auth, "7b0c6a38-2d32-4a4e-9f3f-4f0a8e6c1d11", items("s-1")), 404
    )
    assert_error(await send_batch(server, auth, "not-a-uuid", items("s-1")), 400)
    unauthenticated = await server.client.post(
        "/api/chat/messages", json={"sessionId": sid, "messages": items("s-1")}
    )
    assert_error(unauthenticated, 401)
    assert await history(server, auth, sid) == []


@pytest.mark.parametrize("limits", [LimitsConfig(send_burst=5, sends_per_second=0.5, max_batch=5)])
async def test_rate_limit_charges_every_item_and_refuses_the_whole_batch(server, auth) -> None:
    sid = await init_session(server, auth)
    first = await send_batch(server, auth, sid, items("r-1", "r-2", "r-3", "r-4"))
    assert first.status_code == 201
    limited = await send_batch(server, auth, sid, items("r-5", "r-6"))  # 1 token left
    assert_error(limited, 429)
    assert limited.headers["Retry-After"] == "2"  # the missing token at 0.5/s
    assert len(await history(server, auth, sid)) == 4
    # a retry of the stored batch is answered, not refused; with one new item it fits
    retry = await send_batch(server, auth, sid, items("r-1", "r-2", "r-3", "r-4"))
    assert retry.status_code == 200
    more = await send_batch(server, auth, sid, items("r-1", "r-5"))
    assert [r["status"] for r in more.json()["results"]] == [200, 201]
    assert_error(await send(server, auth, sid, "one more", "r-6"), 429)  # the bucket is empty


@pytest.mark.parametrize("limits", [LimitsConfig(identical_content=3)])
async def test_identical_texts_count_their_copies_within_the_batch(sqlite_server, auth) -> None:
    sid = await init_session(sqlite_server, auth)
    same = [{"content": "same", "clientMessageId": f"i-{i}"} for i in range(4)]
    assert_error(await send_batch(sqlite_server, auth, sid, same), 429)
    assert (await send_batch(sqlite_server, auth, sid, same[:3])).status_code == 201


async def test_a_batch_body_may_be_larger_than_one_send_body(sqlite_server, auth) -> None:
    sid = await init_session(sqlite_server, auth)
    texts = [
        {"content": f"{i:04d}" + "x" * 3996, "clientMessageId": f"big-{i}"} for i in range(20)
    ]  # 80 kB: over the one-message body limit (about 64 kB)
    answer = await send_batch(sqlite_server, auth, sid, texts)
    assert answer.status_code == 201, answer.text
    assert len(answer.json()["results"]) == 20
    too_big = await sqlite_server.client.post(
        "/api/chat/message",
        headers=auth(ALICE),
        json={"sessionId": sid, "content": "y", "clientMessageId": "z" * 80_000},
    )
    assert_error(too_big, 413)
