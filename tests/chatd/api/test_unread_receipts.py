"""REST: unread lists and counts, delivered/seen receipts, the session list."""

from __future__ import annotations

import pytest

from tests.chatd.api.conftest import ALICE, BOB, CAROL, assert_error, init_session, send


async def _seqs(server, auth, path: str, caller: str) -> list[int]:
    answer = await server.client.get(path, headers=auth(caller))
    assert answer.status_code == 200, answer.text
    return [m["seq"] for m in answer.json()]


async def _count(server, auth, sid: str, caller: str) -> int:
    answer = await server.client.get(f"/api/chat/{sid}/unread/count", headers=auth(caller))
    assert answer.status_code == 200, answer.text
    assert answer.json()["sessionId"] == sid
    count: int = answer.json()["count"]
    return count


async def test_unread_after_delivered_and_seen(server, auth) -> None:
    sid = await init_session(server, auth)
    for i in range(5):
        await send(server, auth, sid, f"a{i}", f"a{i}")  # seq 1..5 from alice
    await send(server, auth, sid, "from bob", "b0", caller=BOB)  # seq 6

    # Own messages are never unread.
    assert await _seqs(server, auth, f"/api/chat/{sid}/unread", ALICE) == [6]
    assert await _count(server, auth, sid, ALICE) == 1
    assert await _seqs(server, auth, f"/api/chat/{sid}/unread", BOB) == [1, 2, 3, 4, 5]
    assert await _seqs(server, auth, f"/api/chat/unread/{sid}/{BOB}", BOB) == [1, 2, 3, 4, 5]
    upper = BOB.upper()
    assert await _seqs(server, auth, f"/api/chat/unread/{sid}/{upper}", BOB) == [1, 2, 3, 4, 5]

    delivered = await server.client.post(
        f"/api/chat/{sid}/delivered", json={"upToSeq": 4}, headers=auth(BOB)
    )
    assert delivered.json() == {"sessionId": sid, "status": "delivered", "upToSeq": 4, "updated": 4}
    assert await _count(server, auth, sid, BOB) == 5  # delivered is not seen

    seen = await server.client.post(f"/api/chat/{sid}/seen", json={"upToSeq": 2}, headers=auth(BOB))
    assert seen.json() == {"sessionId": sid, "status": "seen", "upToSeq": 2, "updated": 2}
    assert await _seqs(server, auth, f"/api/chat/{sid}/unread", BOB) == [3, 4, 5]
    again = await server.client.post(
        f"/api/chat/{sid}/seen", json={"upToSeq": 2}, headers=auth(BOB)
    )
    assert again.json()["updated"] == 0

    history = (await server.client.get(f"/api/chat/{sid}/history", headers=auth(ALICE))).json()
    by_seq = {m["seq"]: m for m in history}
    assert by_seq[1]["seen"]
    assert by_seq[1]["delivered"]
    assert by_seq[1]["seenAt"]
    assert by_seq[3]["delivered"]
    assert not by_seq[3]["seen"]
    assert not by_seq[5]["delivered"]
    assert by_seq[5]["deliveredAt"] is None
    assert not by_seq[6]["delivered"]  # bob's own message untouched by bob's receipts

    ids = [by_seq[5]["messageId"], by_seq[6]["messageId"]]
    by_ids = await server.client.post(
        f"/api/chat/{sid}/seen", json={"messageIds": ids}, headers=auth(BOB)
    )
    assert by_ids.status_code == 200
    assert (by_ids.json()["status"], by_ids.json()["updated"]) == ("seen", 1)
    assert await _seqs(server, auth, f"/api/chat/{sid}/unread", BOB) == [3, 4]
    assert await _seqs(server, auth, f"/api/chat/{sid}/unread?limit=1", BOB) == [3]
    assert await _seqs(server, auth, f"/api/chat/{sid}/unread", ALICE) == [6]


async def test_unread_totals_and_session_list(server, auth) -> None:
    with_bob = await init_session(server, auth, ALICE, BOB)
    with_carol = await init_session(server, auth, ALICE, CAROL)
    quiet = await init_session(server, auth, ALICE, BOB, "rent")
    await send(server, auth, with_bob, "1", "b1", caller=BOB)
    await send(server, auth, with_bob, "2", "b2", caller=BOB)
    await send(server, auth, with_carol, "3", "c1", caller=CAROL)
    await send(server, auth, with_carol, "mine", "a1")

    totals = (await server.client.get("/api/chat/unread", headers=auth(ALICE))).json()
    assert totals["total"] == 3
    assert sorted((s["sessionId"], s["count"]) for s in totals["sessions"]) == sorted(
        [(with_bob, 2), (with_carol, 1)]
    )
    empty = (await server.client.get("/api/chat/unread", headers=auth("dave@example.com"))).json()
    assert empty == {"total": 0, "sessions": []}

    listed = (await server.client.get("/api/chat/sessions", headers=auth(ALICE))).json()
    entries = listed["sessions"]
    assert listed["nextCursor"] is None
    assert {e["sessionId"] for e in entries} == {with_bob, with_carol, quiet}
    by_id = {e["sessionId"]: e for e in entries}
    assert by_id[with_carol]["lastMessage"]["content"] == "mine"
    assert by_id[with_carol]["unreadCount"] == 1
    assert by_id[quiet]["lastMessage"] is None
    assert by_id[quiet]["unreadCount"] == 0

    walked, cursor = [], None
    while True:
        params = {"limit": 1} | ({"cursor": cursor} if cursor else {})
        page = (
            await server.client.get("/api/chat/sessions", params=params, headers=auth(ALICE))
        ).json()
        walked += [e["sessionId"] for e in page["sessions"]]
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert sorted(walked) == sorted(by_id)
    assert len(walked) == 3
    bad = await server.client.get("/api/chat/sessions?cursor=garbage", headers=auth(ALICE))
    assert_error(bad, 400)


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"upToSeq": -1},
        {"upToSeq": "x"},
        {"upToSeq": True},
        {"upToSeq": 1, "messageIds": ["x"]},
        {"messageIds": []},
        {"messageIds": "abc"},
        {"messageIds": ["not-a-uuid"]},
        {"messageIds": [1]},
    ],
)
async def test_receipt_bad_bodies(sqlite_server, auth, body) -> None:
    sid = await init_session(sqlite_server, auth)
    answer = await sqlite_server.client.post(f"/api/chat/{sid}/seen", json=body, headers=auth(BOB))
    assert_error(answer, 400)
