"""The storage contract: one suite, run against every backend through the `store` fixture.

Each test states a promise of `chatd.storage.base.Store` that services and the outbox publisher
rely on; nothing here knows which backend it talks to, except the migration tests, which need an
empty database of their own.
"""

from __future__ import annotations

import functools
import json
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio
import trio.lowlevel

from chatd.domain.errors import BadRequest, Conflict, Forbidden, NotFound, Unavailable
from chatd.domain.models import ChatSession, Message, OutboxRow, Participant, PublicKey
from chatd.storage import SchemaError, Store, open_store
from chatd.storage.base import Appended, NewMessage, append_one

T0 = datetime(2026, 11, 28, 13, 0, tzinfo=UTC)


async def test_purge_deletes_only_rows_sent_before_the_cutoff_in_batches(store: Store) -> None:
    session = await chat(store)
    await send(store, session, ANN, 4)  # 12 rows
    rows = await store.claim_outbox(limit=100, lease_seconds=30, now=at(10))
    await store.mark_outbox_sent([r.id for r in rows[:6]], now=at(20))  # old enough
    await store.mark_outbox_sent([r.id for r in rows[6:9]], now=at(40))  # too recent
    await store.mark_outbox_failed(rows[9].id, error="x", next_retry_at=at(20), dead=True)
    await store.release_outbox([r.id for r in rows[10:]], now=at(20))  # still pending

    assert await store.purge_outbox(sent_before=at(30), limit=4) == 4
    assert await store.purge_outbox(sent_before=at(30), limit=4) == 2
    assert await store.purge_outbox(sent_before=at(30), limit=4) == 0
    assert await store.outbox_stats() == (2, 1)  # pending and dead untouched
    left = await store.claim_outbox(limit=100, lease_seconds=30, now=LATER)
    assert [r.id for r in left] == [r.id for r in rows[10:]]
    # the recent sent rows go once the cutoff passes them; dead rows never
    assert await store.purge_outbox(sent_before=LATER, limit=100) == 3
    assert await store.outbox_stats() == (2, 1)


LATER = T0 + timedelta(hours=1)  # when every row the tests wrote is due


def person(name: str, profile: str | None = None) -> Participant:
    return Participant(profile or f"p-{name}", f"{name}@example.com", name.title())


ANN, BOB, CAT = person("ann", "200"), person("bob", "100"), person("cat", "300")


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


async def chat(store: Store, a: Participant = ANN, b: Participant = BOB) -> ChatSession:
    return await store.get_or_create_session("dating", a, b, now=T0)


async def send(
    store: Store, session: ChatSession, sender: Participant, n: int, *, start: int = 0
) -> list[Message]:
    sent = []
    for i in range(start, start + n):
        message, _ = await append_one(
            store, session.id, sender, f"text {i}", f"{sender.email}-{i}", at(i)
        )
        sent.append(message)
    return sent


# -- sessions ----------------------------------------------------------------------------------


async def test_same_session_in_both_directions_and_per_intent(store: Store) -> None:
    first = await store.get_or_create_session("dating", ANN, BOB, now=T0)
    again = await store.get_or_create_session("dating", BOB, ANN, now=at(5))
    other = await store.get_or_create_session("hiring", ANN, BOB, now=T0)
    assert again == first
    assert other.id != first.id
    assert [p.profile_id for p in first.participants] == ["100", "200"]  # canonical order
    assert first.emails == ("bob@example.com", "ann@example.com")
    assert first.created_at == T0
    assert first.last_seq == 0
    assert await store.get_session(first.id) == first
    assert await store.get_session(uuid.uuid4()) is None


async def test_concurrent_creators_get_one_session(store: Store) -> None:
    found: list[ChatSession] = []

    async def create(i: int) -> None:
        a, b = (ANN, BOB) if i % 2 else (BOB, ANN)
        found.append(await store.get_or_create_session("dating", a, b, now=T0))

    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(create, i)
    assert len({s.id for s in found}) == 1


# -- appending ---------------------------------------------------------------------------------


async def test_append_stores_message_and_json_shape(store: Store) -> None:
    session = await chat(store)
    sent = at(0.123456)
    message, created = await append_one(store, session.id, ANN, "héllo", "c-1", sent)
    assert created
    assert message.seq == 1
    assert message.sent_at == sent
    assert message.to_json() == {
        "messageId": str(message.message_id),
        "sessionId": str(session.id),
        "seq": 1,
        "senderId": "200",
        "senderEmail": "ann@example.com",
        "senderDisplayName": "Ann",
        "content": "héllo",
        "clientMessageId": "c-1",
        "sentAt": "2026-11-28T13:00:00.123456Z",
        "delivered": False,
        "seen": False,
        "deliveredAt": None,
        "seenAt": None,
    }
    assert await store.history(session.id, limit=10) == [message]
    assert (await store.get_session(session.id)).last_seq == 1  # type: ignore[union-attr]


async def test_append_refuses_unknown_session_and_outsiders(store: Store) -> None:
    session = await chat(store)
    with pytest.raises(NotFound):
        await append_one(store, uuid.uuid4(), ANN, "x", "c-1", T0)
    with pytest.raises(Forbidden):
        await append_one(store, session.id, CAT, "x", "c-1", T0)
    assert await store.history(session.id, limit=10) == []
    assert (await send(store, session, ANN, 1))[0].seq == 1  # the failures left no gap


async def test_repeated_client_message_id_returns_the_original(store: Store) -> None:
    session = await chat(store)
    original, created = await append_one(store, session.id, ANN, "hi", "c-1", T0)
    repeat, again = await append_one(store, session.id, ANN, "changed", "c-1", at(9))
    assert created
    assert not again
    assert repeat == original
    assert await store.find_message(ANN.email, "c-1") == original
    assert await store.find_message(BOB.email, "c-1") is None
    other, created_by_bob = await append_one(store, session.id, BOB, "hi", "c-1", T0)
    assert created_by_bob
    assert other.seq == 2
    assert len(await store.history(session.id, limit=10)) == 2
    assert (await store.outbox_stats())[0] == 6  # three rows per stored message, none for repeats


async def test_concurrent_duplicates_store_one_message(store: Store) -> None:
    session = await chat(store)
    results: list[tuple[Message, bool]] = []

    async def append() -> None:
        results.append(await append_one(store, session.id, ANN, "once", "dup", T0))

    async with trio.open_nursery() as nursery:
        for _ in range(20):
            nursery.start_soon(append)
    assert [created for _, created in results].count(True) == 1
    assert len({message for message, _ in results}) == 1
    assert len(await store.history(session.id, limit=50)) == 1
    assert (await store.outbox_stats())[0] == 3


async def test_concurrent_senders_get_gapless_seqs(store: Store) -> None:
    session = await chat(store)

    async def sender(i: int) -> None:
        who = ANN if i % 2 else BOB
        await append_one(store, session.id, who, f"m{i}", f"c-{i}", at(i))

    async with trio.open_nursery() as nursery:
        for i in range(50):
            nursery.start_soon(sender, i)
    history = await store.history(session.id, limit=100)
    assert [m.seq for m in history] == list(range(50, 0, -1))
    rows = await store.claim_outbox(limit=500, lease_seconds=30, now=at(100))
    topic = [json.loads(r.payload)["seq"] for r in rows if r.destination.startswith("/topic/")]
    assert topic == list(range(1, 51))  # outbox order is seq order


# -- reading -----------------------------------------------------------------------------------


HAZARDS = [  # what an array literal must quote or escape, and what it could read as NULL
    'say "hi"',
    'back\\slash \\" both',
    "{braces, commas}",
    "NULL",
    "",
    "  spaced  ",
    "tab\tnew\nline",
    "é ✓ 🙂",
]


async def test_batch_append_stores_every_text_exactly_as_sent(store: Store) -> None:
    """The batch goes down as parallel arrays (PostgreSQL: in binary): no text may come back
    changed, in the message or in its outbox rows' payloads."""
    session = await chat(store)
    batch = [
        NewMessage(session.id, ANN, text, f"{text}/id", at(i)) for i, text in enumerate(HAZARDS)
    ]
    results = await store.append_messages(batch)
    assert all(isinstance(r, Appended) and r.created for r in results)
    stored = await store.messages_after(session.id, 0, 100)
    assert [(m.content, m.client_message_id) for m in stored] == [(t, f"{t}/id") for t in HAZARDS]
    rows = await store.claim_outbox(limit=100, lease_seconds=30, now=LATER)
    payloads = defaultdict(list)
    for row in rows:
        payloads[row.seq].append(json.loads(row.payload)["content"])
    assert payloads == {i + 1: [t] * 3 for i, t in enumerate(HAZARDS)}


async def test_batch_append_gives_consecutive_seqs_and_per_message_answers(store: Store) -> None:
    one, two = await chat(store), await chat(store, ANN, CAT)
    ghost = uuid.uuid4()
    [old] = await send(store, one, ANN, 1)
    batch = [
        NewMessage(one.id, ANN, "a", "b-1", at(10)),
        NewMessage(two.id, CAT, "b", "b-2", at(11)),
        NewMessage(one.id, BOB, "c", "b-3", at(12)),
        NewMessage(ghost, ANN, "d", "b-4", at(13)),  # unknown session
        NewMessage(two.id, BOB, "e", "b-5", at(14)),  # not a participant
        NewMessage(one.id, ANN, "again", old.client_message_id, at(15)),  # stored repeat
        NewMessage(one.id, ANN, "f", "b-1", at(16)),  # repeat within the batch
        NewMessage(one.id, ANN, "g", "b-6", at(17)),
    ]
    results = await store.append_messages(batch)
    assert [type(r).__name__ for r in results] == [
        "Appended",
        "Appended",
        "Appended",
        "NotFound",
        "Forbidden",
        "Appended",
        "Appended",
        "Appended",
    ]
    ok = [r for r in results if isinstance(r, Appended)]
    assert [(r.message.content, r.message.seq, r.created) for r in ok] == [
        ("a", 2, True),
        ("b", 1, True),
        ("c", 3, True),
        ("text 0", 1, False),
        ("a", 2, False),
        ("g", 4, True),
    ]
    assert ok[4].message.message_id == ok[0].message.message_id
    assert [m.content for m in await store.messages_after(one.id, 0, 10)] == [
        "text 0",
        "a",
        "c",
        "g",
    ]
    # each new message carries its three outbox rows; within a session ids follow seqs
    new_rows = [row for r in ok if r.created for row in r.outbox]
    for sid in (one.id, two.id):
        mine = sorted((row for row in new_rows if row.session_id == sid), key=lambda r: r.id)
        assert [row.seq for row in mine] == sorted(row.seq for row in mine)
    assert all(len(r.outbox) == 3 for r in ok if r.created)
    assert all(not r.outbox for r in ok if not r.created)
    claimed = await store.claim_outbox(limit=100, lease_seconds=30, now=LATER)
    assert {r.id for r in new_rows} <= {r.id for r in claimed}


async def test_batch_rows_leased_to_the_caller_wait_and_sent_marks(store: Store) -> None:
    session = await chat(store)
    results = await store.append_messages(
        [NewMessage(session.id, ANN, f"m{i}", f"lease-{i}", at(i)) for i in range(3)],
        lease_until=at(60),
    )
    rows = [row for r in results if isinstance(r, Appended) for row in r.outbox]
    assert len(rows) == 9
    # leased: not claimable before the lease ends (nor is anything of the session after them)
    assert await store.claim_outbox(limit=100, lease_seconds=30, now=at(30)) == []
    # marked sent in a later batch's transaction: never published again
    await store.append_messages(
        [NewMessage(session.id, BOB, "later", "lease-x", at(40))],
        lease_until=at(100),
        sent=[r.id for r in rows[:6]],
        now=at(40),
    )
    assert [r.id for r in await store.claim_outbox(limit=100, lease_seconds=30, now=at(70))] == [
        r.id for r in rows[6:]
    ]
    assert await store.outbox_stats() == (6, 0)  # 3 claimed above, 3 leased until 100


async def test_outbox_rows_keep_the_trace_context_of_their_send(store: Store) -> None:
    # The context crosses the outbox as data (chatd.observability.tracing): every row of a
    # message carries its send's traceparent, whether delivered by the writer (leased) or
    # claimed by a publisher; a send without one (tracing off) leaves the rows without.
    session = await chat(store)
    traced = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    results = await store.append_messages(
        [
            NewMessage(session.id, ANN, "traced", "tc-1", at(1), traced),
            NewMessage(session.id, ANN, "untraced", "tc-2", at(2)),
        ],
        lease_until=at(5),
    )
    appended = [r for r in results if isinstance(r, Appended)]
    assert [[row.trace_context for row in r.outbox] for r in appended] == [[traced] * 3, [None] * 3]
    claimed = await store.claim_outbox(limit=100, lease_seconds=30, now=at(10))
    assert [r.trace_context for r in claimed] == [traced] * 3 + [None] * 3
    # a receipt's rows carry none (not traced)
    await store.mark(session.id, BOB.email, "seen", up_to_seq=2, at=at(20))
    again = await store.claim_outbox(limit=100, lease_seconds=30, now=LATER)
    receipts = [r for r in again if r.event == "receipt"]
    assert receipts
    assert all(r.trace_context is None for r in receipts)


async def test_history_cursors(store: Store) -> None:
    session = await chat(store)
    await send(store, session, ANN, 10)

    def seqs(messages: list[Message]) -> list[int]:
        return [m.seq for m in messages]

    assert seqs(await store.history(session.id, limit=3)) == [10, 9, 8]
    assert seqs(await store.history(session.id, limit=3, before=5)) == [4, 3, 2]
    assert seqs(await store.history(session.id, limit=3, after=5)) == [8, 7, 6]
    assert seqs(await store.history(session.id, limit=9, after=5, before=8)) == [7, 6]
    assert seqs(await store.history(session.id, limit=3, after=10)) == []
    assert seqs(await store.messages_after(session.id, 7, 10)) == [8, 9, 10]
    assert seqs(await store.messages_after(session.id, 0, 2)) == [1, 2]


async def test_history_walks_1000_messages_without_loss_or_repeat(store: Store) -> None:
    session = await chat(store)

    async def writer(part: int) -> None:
        await send(store, session, ANN if part % 2 else BOB, 100, start=part * 100)

    async with trio.open_nursery() as nursery:
        for part in range(10):
            nursery.start_soon(writer, part)
    backwards: list[int] = []
    page = await store.history(session.id, limit=64)
    while page:
        backwards += [m.seq for m in page]
        page = await store.history(session.id, limit=64, before=page[-1].seq)
    assert backwards == list(range(1000, 0, -1))
    forwards: list[int] = []
    cursor = 0
    while page := await store.history(session.id, limit=64, after=cursor):
        assert [m.seq for m in page] == sorted((m.seq for m in page), reverse=True)
        forwards += [m.seq for m in reversed(page)]
        cursor = page[0].seq
    assert forwards == list(range(1, 1001))


async def test_unread_counts_and_totals(store: Store) -> None:
    first, second = await chat(store), await chat(store, ANN, CAT)
    await send(store, first, BOB, 3)
    await send(store, first, ANN, 2, start=10)
    await send(store, second, CAT, 1)
    assert [m.seq for m in await store.unread(first.id, ANN.email)] == [1, 2, 3]
    assert [m.seq for m in await store.unread(first.id, ANN.email, limit=2)] == [1, 2]
    assert await store.unread_count(first.id, ANN.email) == 3
    assert await store.unread_count(first.id, BOB.email) == 2  # own messages never count
    assert await store.unread_totals(ANN.email) == [(first.id, 3), (second.id, 1)]

    await store.mark(first.id, ANN.email, "delivered", up_to_seq=3, at=at(20))
    assert await store.unread_count(first.id, ANN.email) == 3  # delivered is not seen
    await store.mark(first.id, ANN.email, "seen", up_to_seq=2, at=at(21))
    assert [m.seq for m in await store.unread(first.id, ANN.email)] == [3]
    assert await store.unread_totals(ANN.email) == [(first.id, 1), (second.id, 1)]
    await store.mark(second.id, ANN.email, "seen", up_to_seq=1, at=at(22))
    assert await store.unread_totals(ANN.email) == [(first.id, 1)]
    assert await store.unread_totals("nobody@example.com") == []


async def test_marks_never_move_backwards(store: Store) -> None:
    session = await chat(store)
    sent = await send(store, session, BOB, 4)
    await send(store, session, ANN, 1, start=10)

    seen = await store.mark(session.id, ANN.email, "seen", up_to_seq=2, at=at(20))
    assert (seen.status, seen.up_to_seq, seen.updated) == ("seen", 2, 2)
    later = await store.mark(session.id, ANN.email, "delivered", up_to_seq=99, at=at(30))
    assert (later.up_to_seq, later.updated) == (5, 2)  # clamped; 1-2 were already delivered
    again = await store.mark(session.id, ANN.email, "seen", up_to_seq=1, at=at(40))
    assert again.updated == 0
    by_id = await store.mark(
        session.id, ANN.email, "seen", message_ids=[sent[3].message_id], at=at(50)
    )
    assert (by_id.up_to_seq, by_id.updated) == (4, 1)

    history = {m.seq: m for m in await store.history(session.id, limit=10)}
    assert history[1].seen
    assert history[1].delivered
    assert history[1].seen_at == at(20)
    assert history[1].delivered_at == at(20)
    assert history[3].delivered_at == at(30)
    assert not history[3].seen
    assert history[4].seen_at == at(50)
    assert history[4].delivered_at == at(30)
    assert not history[5].delivered  # Ann's own message: her receipts never touch it
    assert history[1].to_json()["seenAt"] == "2026-11-28T13:00:20.000000Z"


async def test_mark_arguments(store: Store) -> None:
    session = await chat(store)
    with pytest.raises(NotFound):
        await store.mark(uuid.uuid4(), ANN.email, "seen", up_to_seq=1, at=T0)
    with pytest.raises(BadRequest):
        await store.mark(session.id, ANN.email, "seen", at=T0)
    with pytest.raises(BadRequest):
        await store.mark(session.id, ANN.email, "read", up_to_seq=1, at=T0)  # type: ignore[arg-type]
    nothing = await store.mark(session.id, ANN.email, "seen", message_ids=[uuid.uuid4()], at=T0)
    assert (nothing.up_to_seq, nothing.updated) == (None, 0)


async def test_sessions_for_pages_by_activity(store: Store) -> None:
    people = [person(f"u{i}", f"{500 + i}") for i in range(5)]
    sessions = [await chat(store, ANN, p) for p in people]
    for i, session in enumerate(sessions):
        await append_one(store, session.id, people[i], f"hi {i}", f"c{i}", at(10 * i))
    await append_one(store, sessions[1].id, ANN, "latest", "c-ann", at(100))

    summaries = await store.sessions_for(ANN.email, limit=2)
    pages = [summaries]
    while summaries:
        summaries = await store.sessions_for(ANN.email, limit=2, cursor=summaries[-1].cursor)
        pages.append(summaries)
    listed = [s for page in pages for s in page]
    assert [s.session.id for s in listed] == [sessions[i].id for i in (1, 4, 3, 2, 0)]
    assert listed[0].last_message is not None
    assert listed[0].last_message.content == "latest"
    assert [s.unread for s in listed] == [1, 1, 1, 1, 1]
    assert (await store.sessions_for(people[0].email, limit=5))[0].unread == 0
    empty = await chat(store, BOB, CAT)
    assert (await store.sessions_for(CAT.email, limit=5))[0].last_message is None
    assert (await store.sessions_for(CAT.email, limit=5))[0].session == empty
    with pytest.raises(BadRequest):
        await store.sessions_for(ANN.email, limit=2, cursor="garbage")


async def test_peers_are_the_other_participants_most_recent_first(store: Store) -> None:
    people = [person(f"p{i}", f"{700 + i}") for i in range(3)]
    sessions = [await chat(store, ANN, p) for p in people]
    await store.get_or_create_session("other-intent", people[0], ANN, now=T0)  # same peer twice
    for i, session in enumerate(sessions):
        await append_one(store, session.id, ANN, f"hi {i}", f"peer-{i}", at(10 * i))
    await chat(store, BOB, CAT)  # not Ann's: never a peer of hers
    assert await store.peers(ANN.email, limit=10) == [p.email for p in reversed(people)]
    assert await store.peers(ANN.email, limit=2) == [people[2].email, people[1].email]
    assert await store.peers(people[0].email, limit=10) == [ANN.email]
    among = [people[0].email, CAT.email, "nobody@example.com"]
    assert await store.peers(ANN.email, limit=10, among=among) == [people[0].email]
    assert await store.peers(ANN.email, limit=10, among=[]) == []
    assert await store.peers("nobody@example.com", limit=10) == []


# -- the outbox --------------------------------------------------------------------------------


async def test_outbox_rows_are_written_with_the_message(store: Store) -> None:
    session = await chat(store)
    message, _ = await append_one(store, session.id, ANN, "hi", "c-1", T0)
    rows = await store.claim_outbox(limit=10, lease_seconds=30, now=T0)
    assert [r.destination for r in rows] == [
        f"/topic/session.{session.id}",
        "user:bob@example.com:/queue/messages",
        "user:ann@example.com:/queue/messages",
    ]
    for row in rows:
        assert (row.event, row.message_id, row.session_id, row.seq) == (
            "message",
            message.message_id,
            session.id,
            1,
        )
        assert json.loads(row.payload) == message.to_json()
        assert (row.retry_count, row.last_error, row.created_at) == (0, None, T0)

    await store.mark_outbox_sent([r.id for r in rows], now=T0)
    await store.mark(session.id, BOB.email, "seen", up_to_seq=1, at=at(5))
    receipts = await store.claim_outbox(limit=10, lease_seconds=30, now=at(5))
    assert [r.destination for r in receipts] == [
        f"/topic/session.{session.id}",
        "user:ann@example.com:/queue/receipts",
    ]
    assert {r.event for r in receipts} == {"receipt"}
    assert json.loads(receipts[0].payload) == {
        "sessionId": str(session.id),
        "readerEmail": "bob@example.com",
        "status": "seen",
        "upToSeq": 1,
        "at": "2026-11-28T13:00:05.000000Z",
    }
    await store.mark(session.id, BOB.email, "seen", up_to_seq=1, at=at(6))  # no change
    assert await store.outbox_stats() == (2, 0)  # so no new receipt rows


async def test_claim_lease_retry_and_dead(store: Store) -> None:
    session = await chat(store)
    await send(store, session, ANN, 2)
    first = await store.claim_outbox(limit=4, lease_seconds=30, now=at(5))
    assert [r.seq for r in first] == [1, 1, 1, 2]
    assert all(r.next_retry_at == at(35) for r in first)
    assert await store.claim_outbox(limit=10, lease_seconds=30, now=at(34)) == []  # leased
    again = await store.claim_outbox(limit=10, lease_seconds=30, now=at(35))  # lease ran out
    assert [r.id for r in again] == [r.id for r in first] + [first[-1].id + 1, first[-1].id + 2]

    await store.mark_outbox_sent([r.id for r in again[:3]], now=at(36))
    await store.mark_outbox_failed(again[3].id, error="boom", next_retry_at=at(45), dead=False)
    await store.release_outbox([r.id for r in again[4:]], now=at(36))
    assert await store.outbox_stats() == (3, 0)
    # the failed row blocks the rest of its session until it is due again: order is kept
    assert await store.claim_outbox(limit=10, lease_seconds=30, now=at(40)) == []
    retried = await store.claim_outbox(limit=10, lease_seconds=30, now=at(45))
    assert [r.id for r in retried] == [r.id for r in again[3:]]
    assert (retried[0].retry_count, retried[0].last_error) == (1, "boom")

    await store.mark_outbox_failed(retried[0].id, error="gave up", next_retry_at=at(45), dead=True)
    assert await store.outbox_stats() == (2, 1)
    await store.release_outbox([r.id for r in retried[1:]], now=at(46))
    rest = await store.claim_outbox(limit=10, lease_seconds=30, now=at(46))  # dead rows don't block
    assert [r.id for r in rest] == [r.id for r in retried[1:]]
    await store.mark_outbox_sent([r.id for r in rest], now=at(42))
    assert await store.outbox_stats() == (0, 1)
    assert await store.claim_outbox(limit=10, lease_seconds=30, now=at(999)) == []


async def test_concurrent_claimers_share_nothing_and_keep_session_order(store: Store) -> None:
    people = [person(f"u{i}", f"{500 + i}") for i in range(6)]
    sessions = [await chat(store, ANN, p) for p in people]
    async with trio.open_nursery() as nursery:
        for i, session in enumerate(sessions):
            nursery.start_soon(send, store, session, people[i], 12)
    total = len(sessions) * 12 * 3
    handed: list[int] = []
    done: set[int] = set()
    by_session: dict[uuid.UUID, list[int]] = defaultdict(list)

    async def claimer() -> None:
        while len(handed) < total:
            rows: list[OutboxRow] = await store.claim_outbox(limit=7, lease_seconds=60, now=LATER)
            for row in rows:
                earlier = [i for i in by_session[row.session_id] if i < row.id]
                assert all(i in done or i in {r.id for r in rows} for i in earlier)
            handed.extend(r.id for r in rows)
            done.update(r.id for r in rows)  # before the mark: never lag behind the database
            await store.mark_outbox_sent([r.id for r in rows], now=T0)
            await trio.lowlevel.checkpoint()

    for row in await store.claim_outbox(limit=total, lease_seconds=0, now=LATER):
        by_session[row.session_id].append(row.id)  # lease 0: a look without holding anything
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(claimer)
    assert sorted(handed) == sorted(set(handed))
    assert len(handed) == total
    assert await store.outbox_stats() == (0, 0)


async def test_wait_for_outbox_wakes_on_new_rows(store: Store) -> None:
    session = await chat(store)
    with trio.move_on_after(0.2):  # a first call may return at once (a fresh listener)
        await store.wait_for_outbox()
    woke = trio.Event()

    async def waiter() -> None:
        await store.wait_for_outbox()
        woke.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.sleep(0.1)
        assert not woke.is_set()
        await send(store, session, ANN, 1)
        with trio.fail_after(5):
            await woke.wait()


async def test_closing_the_store_under_a_waiter_is_unavailable_not_a_crash(
    store_url: str,
) -> None:
    outcome: list[str] = []
    store = open_store(store_url)
    await store.open()
    with trio.move_on_after(0.2):
        await store.wait_for_outbox()  # a fresh listener returns at once

    async def waiter() -> None:
        with trio.move_on_after(1):
            try:
                await store.wait_for_outbox()
            except Unavailable:
                outcome.append("unavailable")
                return
            outcome.append("returned")
            return
        outcome.append("still waiting")  # SQLite: nothing to wake it, which is fine

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.sleep(0.1)
        await store.aclose()
    assert len(outcome) == 1  # the waiter ended without any other exception


# -- lifecycle and schema ----------------------------------------------------------------------


async def test_migrations_are_idempotent_and_checked(store_url: str, tmp_path: Path) -> None:
    url = _fresh_database(store_url, tmp_path)
    async with open_store(url) as store:
        await store.ping()
        with pytest.raises(SchemaError):
            await store.check_schema()
        # numbers may have gaps (another branch's 0002 may arrive later): applied in order
        assert await store.migrate() == ["0001_init", "0002_e2e_keys", "0003_outbox_trace_context"]
        assert await store.migrate() == []
        await store.check_schema()
        session = await chat(store)
        assert (await send(store, session, ANN, 1))[0].seq == 1


def _fresh_database(store_url: str, tmp_path: Path) -> str:
    """A URL to an empty database of the same backend (a new PostgreSQL schema)."""
    if store_url.startswith("sqlite:"):
        return f"sqlite:///{tmp_path / 'fresh.sqlite3'}"
    import psycopg

    schema = f"fresh_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(store_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    return f"{store_url}?options=-csearch_path%3D{schema}"


async def test_unreachable_postgres_is_unavailable() -> None:
    store = open_store("postgresql://chatd@127.0.0.1:9/chatd", connect_timeout=0.5)
    with pytest.raises(Unavailable):
        await store.open()


async def test_postgres_calls_keep_the_databases_pace_while_the_loop_is_busy(
    postgres_url: str,
) -> None:
    """Found by the soak: a thread's slot comes back only when trio's busy loop takes its
    result, so with one slot per connection an instance restarted under load ran ~40 store
    calls a second with 1 200 waiting. Counted in turns of a loop that spends 20 ms of other
    work per turn: 40 calls on 2 connections, more than 2 a turn (one slot per connection
    managed about 10 in 15 turns)."""
    import time

    async with open_store(postgres_url, pool_size=2) as store:
        done = 0

        async def call() -> None:
            nonlocal done
            await store.ping()
            done += 1

        async with trio.open_nursery() as nursery:
            for _ in range(40):
                nursery.start_soon(call)
            for _ in range(15):
                time.sleep(0.02)  # noqa: ASYNC251 (the rest of a busy loop's turn, on purpose)
                await trio.lowlevel.checkpoint()
            assert done >= 30, f"{done} of 40 calls done after 15 turns"


def test_open_store_rejects_unknown_schemes() -> None:
    with pytest.raises(ValueError, match="database url"):
        open_store("mysql://localhost/chatd")


async def test_migration_0002_keeps_sessions_messages_and_outbox(
    store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Upgrading a schema-1 database with data: SQLite rebuilds chat_sessions, which must
    neither cascade to the messages nor leave their references dangling."""
    from chatd.storage import migrate

    url = _fresh_database(store_url, tmp_path)
    shipped = migrate.available
    monkeypatch.setattr(migrate, "available", lambda backend: shipped(backend)[:1])
    async with open_store(url) as store:
        assert await store.migrate() == ["0001_init"]
        sid, mid = uuid.uuid4(), uuid.uuid4()
        _schema_one_rows(url, sid, mid)
        monkeypatch.setattr(migrate, "available", shipped)
        assert await store.migrate() == ["0002_e2e_keys", "0003_outbox_trace_context"]
        await store.check_schema()
        found = await store.get_session(sid)
        assert found is not None
        assert not found.encrypted
        assert found.last_seq == 1
        [message] = await store.history(sid, limit=10)
        assert (message.message_id, message.content) == (mid, "before the upgrade")
        [row] = await store.claim_outbox(limit=10, lease_seconds=30, now=LATER)
        assert row.message_id == mid
        assert (await send(store, found, BOB, 1, start=1))[0].seq == 2
        encrypted = await store.get_or_create_session("dating", BOB, ANN, now=T0, encrypted=True)
        assert encrypted.id != sid
        assert encrypted.encrypted


def _schema_one_rows(url: str, sid: uuid.UUID, mid: uuid.UUID) -> None:
    """A session with one message and its topic outbox row, written as schema 1 had them."""
    lo, hi = sorted([BOB, ANN], key=lambda p: p.profile_id)
    session = (
        str(sid),
        "dating",
        lo.profile_id,
        lo.email,
        lo.display_name,
        hi.profile_id,
        hi.email,
        hi.display_name,
    )
    if url.startswith("sqlite:"):
        import sqlite3

        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            conn.execute("INSERT INTO chat_sessions VALUES (?,?,?,?,?,?,?,?,2,0,0)", session)
            conn.execute(
                "INSERT INTO chat_messages (id, session_id, seq, sender_id, sender_email,"
                " sender_display_name, content, client_msg_id, sent_at) VALUES "
                "(?,?,1,?,?,?,'before the upgrade','c1',0)",
                (str(mid), str(sid), ANN.profile_id, ANN.email, ANN.display_name),
            )
            conn.execute(
                "INSERT INTO chat_message_outbox (message_id, session_id, seq, event,"
                " destination, payload, next_retry_at, created_at) VALUES "
                "(?,?,1,'message','/topic/x','{}',0,0)",
                (str(mid), str(sid)),
            )
        return
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO chat_sessions VALUES (%s,%s,%s,%s,%s,%s,%s,%s,2,%s,%s)", (*session, T0, T0)
        )
        conn.execute(
            "INSERT INTO chat_messages (id, session_id, seq, sender_id, sender_email,"
            " sender_display_name, content, client_msg_id, sent_at) VALUES "
            "(%s,%s,1,%s,%s,%s,'before the upgrade','c1',%s)",
            (mid, sid, ANN.profile_id, ANN.email, ANN.display_name, T0),
        )
        conn.execute(
            "INSERT INTO chat_message_outbox (message_id, session_id, seq, event,"
            " destination, payload, next_retry_at, created_at) VALUES "
            "(%s,%s,1,'message','/topic/x','{}',%s,%s)",
            (mid, sid, T0, T0),
        )


# -- end-to-end encrypted sessions and public keys ---------------------------------------------


async def test_encrypted_session_is_another_session_of_the_pair_and_intent(store: Store) -> None:
    plain = await chat(store)
    secret = await store.get_or_create_session("dating", BOB, ANN, now=T0, encrypted=True)
    again = await store.get_or_create_session("dating", ANN, BOB, now=LATER, encrypted=True)
    assert secret.id != plain.id
    assert not plain.encrypted
    assert again == secret
    assert secret.encrypted
    assert (await store.get_session(secret.id)) == secret
    listed = await store.sessions_for(ANN.email, limit=10)
    assert sorted(s.session.encrypted for s in listed) == [False, True]


async def test_concurrent_encrypted_creators_get_one_session(store: Store) -> None:
    found: list[ChatSession] = []

    async def create() -> None:
        found.append(await store.get_or_create_session("x", ANN, BOB, now=T0, encrypted=True))

    async with trio.open_nursery() as nursery:
        for _ in range(8):
            nursery.start_soon(create)
    assert len({s.id for s in found}) == 1


def public_key(
    owner: Participant, kid: str, when: datetime, signing: str | None = None
) -> PublicKey:
    return PublicKey(owner.email, kid, f'{{"kid":"{kid}"}}', signing, when)


async def test_shares_session_in_either_direction(store: Store) -> None:
    assert not await store.shares_session(ANN.email, BOB.email)
    await store.get_or_create_session("dating", ANN, BOB, now=T0, encrypted=True)
    assert await store.shares_session(ANN.email, BOB.email)
    assert await store.shares_session(BOB.email, ANN.email)
    assert not await store.shares_session(ANN.email, CAT.email)


async def test_public_keys_current_retired_and_by_id(store: Store) -> None:
    assert await store.public_key(ANN.email) is None
    first = public_key(ANN, "k1", at(1))
    assert await store.put_public_key(first, max_keys=10) == (first, True)
    assert await store.put_public_key(public_key(ANN, "k1", at(2)), max_keys=10) == (first, False)
    second = public_key(ANN, "k2", at(3), signing='{"s":1}')
    assert await store.put_public_key(second, max_keys=10) == (second, True)
    assert await store.public_key(ANN.email) == second
    old = await store.public_key(ANN.email, "k1")
    assert old is not None
    assert old.retired_at == at(3)
    assert not old.current
    assert await store.public_key(ANN.email, "nope") is None
    assert await store.public_key(BOB.email, "k1") is None  # kids are per owner
    with pytest.raises(Conflict, match="replaced"):
        await store.put_public_key(public_key(ANN, "k1", at(4)), max_keys=10)
    with pytest.raises(Conflict, match="signing"):
        await store.put_public_key(public_key(ANN, "k2", at(4)), max_keys=10)
    with pytest.raises(Conflict, match="limit"):
        await store.put_public_key(public_key(ANN, "k3", at(4)), max_keys=2)
    assert await store.public_key(ANN.email) == second  # a refusal changed nothing


async def test_concurrent_key_publishers_leave_one_current_key(store: Store) -> None:
    async with trio.open_nursery() as nursery:
        for i in range(6):
            nursery.start_soon(
                functools.partial(
                    store.put_public_key, public_key(ANN, f"k{i}", at(i)), max_keys=100
                )
            )
    current = await store.public_key(ANN.email)
    assert current is not None
    retired = [await store.public_key(ANN.email, f"k{i}") for i in range(6)]
    assert sum(1 for k in retired if k is not None and k.current) == 1


async def test_key_change_is_announced_to_every_peer_and_the_owner(store: Store) -> None:
    plain = await chat(store, ANN, BOB)
    secret = await store.get_or_create_session("dating", ANN, BOB, now=T0, encrypted=True)
    other = await store.get_or_create_session("y", CAT, ANN, now=T0)
    await store.get_or_create_session("z", BOB, CAT, now=T0)  # not ann's: nobody told there
    await store.put_public_key(public_key(ANN, "k1", at(1)), max_keys=10)
    await store.put_public_key(public_key(ANN, "k2", at(2)), max_keys=10)
    await store.put_public_key(public_key(ANN, "k2", at(3)), max_keys=10)  # no change: silent
    rows = await store.claim_outbox(limit=100, lease_seconds=30, now=LATER)
    assert {r.event for r in rows} == {"keys"}
    told = defaultdict(list)
    for row in rows:
        told[row.destination].append(json.loads(row.payload))
    assert set(told) == {f"user:{p.email}:/queue/keys" for p in (ANN, BOB, CAT)}
    for events in told.values():
        assert [(e["kid"], e["previousKid"]) for e in events] == [("k1", None), ("k2", "k1")]
        assert all(e["email"] == ANN.email for e in events)
    bob_rows = [r for r in rows if r.destination.startswith("user:bob@")]
    assert {r.session_id for r in bob_rows} <= {plain.id, secret.id}
    cat_rows = [r for r in rows if r.destination.startswith("user:cat@")]
    assert {r.session_id for r in cat_rows} == {other.id}


async def test_key_of_a_user_without_sessions_is_stored_and_announced_to_nobody(
    store: Store,
) -> None:
    await store.put_public_key(public_key(CAT, "k1", at(1)), max_keys=10)
    assert await store.claim_outbox(limit=100, lease_seconds=30, now=LATER) == []
    assert (await store.public_key(CAT.email)) is not None


# -- units: a batch send is stored all or nothing ----------------------------------------------


async def test_units_get_contiguous_seqs_between_other_sends(store: Store) -> None:
    session = await chat(store)
    batch = [NewMessage(session.id, BOB, "before", "u-0", at(1))]
    batch += [NewMessage(session.id, ANN, f"unit {i}", f"u-a{i}", at(2)) for i in range(3)]
    batch += [NewMessage(session.id, BOB, "after", "u-1", at(3))]
    results = await store.append_messages(batch, units=[1, 3, 1])
    assert [(r.message.content, r.message.seq) for r in results if isinstance(r, Appended)] == [
        ("before", 1),
        ("unit 0", 2),
        ("unit 1", 3),
        ("unit 2", 4),
        ("after", 5),
    ]


async def test_a_unit_with_a_refused_message_stores_none_of_it(store: Store) -> None:
    one, two = await chat(store), await chat(store, ANN, CAT)
    [elsewhere] = await send(store, two, ANN, 1)  # its client id, reused in `one` below
    batch = [
        NewMessage(one.id, BOB, "single", "w-0", at(1)),
        NewMessage(one.id, ANN, "a", "w-1", at(2)),
        NewMessage(one.id, ANN, "a again", "w-1", at(2)),  # repeat within the unit
        NewMessage(one.id, ANN, "b", elsewhere.client_message_id, at(2)),  # other session
        NewMessage(one.id, ANN, "c", "w-2", at(2)),
        NewMessage(one.id, ANN, "w-1 after all", "w-1", at(3)),  # a unit of its own
        NewMessage(uuid.uuid4(), CAT, "x", "w-3", at(4)),  # unknown session ...
        NewMessage(one.id, CAT, "y", "w-4", at(4)),  # ... and an outsider in one unit
    ]
    results = await store.append_messages(batch, units=[1, 4, 1, 2])
    kinds = [type(r).__name__ for r in results]
    assert kinds == [
        "Appended",
        "Withheld",
        "Withheld",
        "Appended",
        "Withheld",
        "Appended",
        "NotFound",
        "Forbidden",
    ]
    assert isinstance(results[3], Appended)
    assert results[3].message == elsewhere
    assert not results[3].created
    stored = await store.messages_after(one.id, 0, 10)
    assert [(m.content, m.seq) for m in stored] == [("single", 1), ("w-1 after all", 2)]
    assert (await store.get_session(one.id)).last_seq == 2  # type: ignore[union-attr]
    assert (await store.outbox_stats())[0] == 9  # three rows for each of the three stored


async def test_a_unit_retried_after_commit_is_all_repeats(store: Store) -> None:
    session = await chat(store)
    unit = [NewMessage(session.id, ANN, f"m{i}", f"r-{i}", at(1)) for i in range(3)]
    first = await store.append_messages(unit, units=[3])
    again = await store.append_messages(unit, units=[3])
    assert all(isinstance(r, Appended) and r.created for r in first)
    assert [(r.message, r.created) for r in again if isinstance(r, Appended)] == [
        (r.message, False) for r in first if isinstance(r, Appended)
    ]
    found = await store.find_messages(ANN.email, ["r-0", "r-2", "nope"])
    assert sorted(m.client_message_id for m in found) == ["r-0", "r-2"]
    assert await store.find_messages(BOB.email, ["r-0"]) == []
    assert await store.find_messages(ANN.email, []) == []


async def test_units_must_tile_the_batch(store: Store) -> None:
    session = await chat(store)
    batch = [NewMessage(session.id, ANN, "m", f"t-{i}", at(1)) for i in range(3)]
    for units in ([2], [2, 2], [0, 3]):
        with pytest.raises(ValueError, match="do not split"):
            await store.append_messages(batch, units=units)
    assert await store.history(session.id, limit=10) == []
