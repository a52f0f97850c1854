"""The send committer against every storage backend, delivering into a recording sink.

Each test states one promise of `chatd.services.committer.SendCommitter`: concurrent sends are
stored together in per-session seq order and delivered right after their commit, a full queue
refuses at once instead of waiting, delivered rows are marked sent (so the outbox publisher
never sends them again), rows the sink refused are left to the publisher, and what waited
behind delivered rows (a receipt) goes out as soon as they are marked.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import trio
import trio.testing

from chatd.domain.errors import NotFound, Unavailable
from chatd.domain.models import EVENT_RECEIPT
from chatd.outbox import OutboxPublisher
from chatd.services.committer import BUSY_MESSAGES, BUSY_RETRY_AFTER, SendCommitter
from chatd.storage import Store
from chatd.storage.base import Appended, AppendResult, NewMessage

from .conftest import (
    ANN,
    RecordingSink,
    assert_session_order,
    config,
    no_jitter,
    running,
    sessions,
    wait_until,
)


def utc_now() -> datetime:
    return datetime.now(UTC)


@asynccontextmanager
async def committing(committer: SendCommitter) -> AsyncIterator[SendCommitter]:
    """Run `committer` for the block, then stop it and wait until it returned."""
    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        try:
            yield committer
        finally:
            committer.stop()


async def test_concurrent_sends_share_a_transaction_and_are_delivered_in_order(
    store: Store,
) -> None:
    pairs = await sessions(store, 4)
    sink = RecordingSink()
    results: list[Appended] = []

    async def sender(session_id: uuid.UUID, i: int) -> None:
        results.append(
            await committer.append(
                NewMessage(session_id, ANN, f"m{i}", f"{session_id}-{i}", utc_now())
            )
        )

    committer = SendCommitter(store, sink=sink, max_batch=40, clock=utc_now)
    async with committing(committer), trio.open_nursery() as nursery:
        for i in range(25):
            for session, _ in pairs:
                nursery.start_soon(sender, session.id, i)
    assert len(results) == 100
    assert all(r.created for r in results)
    # 100 concurrent sends: a few transactions of at most 40, not 100
    assert 3 <= committer.batches <= 10, committer.batches
    for session, _ in pairs:  # gap-free seqs per session
        seqs = sorted(r.message.seq for r in results if r.message.session_id == session.id)
        assert seqs == list(range(1, 26))
    # delivered right after the commit, every row once, per-session order kept
    assert len(sink.accepted) == 300
    assert len(set(sink.ids)) == 300
    assert_session_order(sink.accepted)
    # ...and marked sent when the committer went idle: nothing is left for the publisher
    await wait_until(lambda: not committer._delivered, within=5)
    assert await store.outbox_stats() == (0, 0)
    assert committer.published == 300


async def test_a_full_queue_refuses_at_once_with_retry_after(store: Store) -> None:
    [(session, _)] = await sessions(store, 1)
    committer = SendCommitter(store, sink=RecordingSink(), max_queued=2, clock=utc_now)
    outcomes: list[object] = []

    async def send(i: int) -> None:
        try:
            outcomes.append(
                await committer.append(NewMessage(session.id, ANN, "x", f"busy-{i}", utc_now()))
            )
        except Unavailable as exc:
            outcomes.append(exc)

    async with committing(committer), trio.open_nursery() as nursery:
        for i in range(3):  # queued before the committer gets to run: the third is one too many
            nursery.start_soon(send, i)
    refused = [o for o in outcomes if isinstance(o, Unavailable)]
    assert len(refused) == 1
    assert refused[0].retry_after == BUSY_RETRY_AFTER
    assert refused[0].message == BUSY_MESSAGES["queue"]
    assert committer.refused == 1
    assert committer.refused_by == {"queue": 1, "backlog": 0, "late": 0}
    assert len(await store.messages_after(session.id, 0, 10)) == 2


async def test_a_bad_message_fails_alone(store: Store) -> None:
    [(session, _)] = await sessions(store, 1)
    committer = SendCommitter(store, sink=RecordingSink(), clock=utc_now)
    outcomes: list[object] = []

    async def send(session_id: uuid.UUID, tag: str) -> None:
        try:
            outcomes.append(
                await committer.append(NewMessage(session_id, ANN, "x", tag, utc_now()))
            )
        except NotFound as exc:
            outcomes.append(exc)

    async with committing(committer), trio.open_nursery() as nursery:
        nursery.start_soon(send, uuid.uuid4(), "ghost")
        nursery.start_soon(send, session.id, "real")
    assert sorted(type(o).__name__ for o in outcomes) == ["Appended", "NotFound"]


async def test_rows_the_sink_refused_are_left_to_the_publisher(store: Store) -> None:
    [(session, _)] = await sessions(store, 1)
    broken = RecordingSink(refuse=lambda rows: True)
    committer = SendCommitter(store, sink=broken, lease_seconds=1.0, clock=utc_now)
    async with committing(committer):
        await committer.append(NewMessage(session.id, ANN, "x", "lost?", utc_now()))
    assert broken.accepted == []
    assert committer.published == 0
    # leased to the committer, so the publisher leaves them alone until the lease ends...
    assert await store.claim_outbox(limit=10, lease_seconds=5, now=utc_now()) == []
    # ...and then sends them: nothing acknowledged is lost
    later = utc_now() + timedelta(seconds=2)
    assert len(await store.claim_outbox(limit=10, lease_seconds=5, now=later)) == 3


async def test_a_receipt_behind_delivered_rows_goes_out_when_they_are_marked(
    store: Store,
) -> None:
    """A receipt row (the publisher's) waits behind the leased rows of the messages before it
    (the per-session order), and the committer's mark wakes the publisher: no poll wait."""
    [(session, other)] = await sessions(store, 1)
    sink = RecordingSink(delay=0.5)  # the receipt is written while the message is delivered
    committer = SendCommitter(store, sink=sink, clock=utc_now)
    publisher = OutboxPublisher(store, sink, config(poll_interval=5.0), random=no_jitter)
    committer.on_marked = publisher.nudge
    async with running(publisher), committing(committer):
        await trio.sleep(0.3)  # the publisher is idle, waiting for a signal or its 5 s poll
        await committer.append(NewMessage(session.id, ANN, "hi", "r-1", utc_now()))
        await store.mark(session.id, other.email, "seen", up_to_seq=1, at=utc_now())
        took = await wait_until(
            lambda: any(r.event == EVENT_RECEIPT for r in sink.accepted), within=4
        )
        assert took < 2.0  # woken by the mark, not by the 5 s poll
    assert [r.event for r in sink.accepted][-1] == EVENT_RECEIPT
    assert_session_order(sink.accepted)


async def test_a_send_already_past_its_deadline_is_refused_at_admission(store: Store) -> None:
    [(session, _)] = await sessions(store, 1)
    committer = SendCommitter(store, sink=RecordingSink(), clock=utc_now)
    async with committing(committer):
        with pytest.raises(Unavailable) as refused:
            committer.admit(trio.current_time() - 0.001)
        committer.admit(trio.current_time() + 10)
        fresh = await committer.append(NewMessage(session.id, ANN, "y", "fresh", utc_now()))
    assert refused.value.retry_after == BUSY_RETRY_AFTER
    assert "max_send_wait_ms" in refused.value.message
    assert committer.refused_by == {"queue": 0, "backlog": 0, "late": 1}
    assert [m.client_message_id for m in await store.messages_after(session.id, 0, 10)] == [
        fresh.message.client_message_id
    ]


def gate_commits(store: Store, gate: trio.Event) -> None:
    """Hold every commit of `store` (the real one) until `gate` is set."""
    append = store.append_messages

    async def held(*args: Any, **kwargs: Any) -> list[AppendResult]:
        await gate.wait()
        return await append(*args, **kwargs)

    store.append_messages = held  # type: ignore[method-assign]


async def test_admission_guesses_the_wait_from_the_oldest_and_stores_what_it_admitted(
    store: Store, mock_clock: trio.testing.MockClock
) -> None:
    """The wait ahead of a new send is guessed from the wait behind the oldest one (here the
    batch committing); a send admitted is stored however late its batch then starts: the
    soak refused late sends after their checks and stored 8 of 150 msg/s."""
    [(session, _)] = await sessions(store, 1)
    gate = trio.Event()
    gate_commits(store, gate)
    committer = SendCommitter(store, sink=RecordingSink(), clock=utc_now)
    stored: list[AppendResult] = []
    async with committing(committer):
        committer.submit(NewMessage(session.id, ANN, "a", "first", utc_now()), stored.append)
        await trio.testing.wait_all_tasks_blocked()  # its batch is committing, held
        mock_clock.jump(0.06)
        committer.admit(trio.current_time() + 0.1)  # 60 ms behind: fits a 100 ms wait
        committer.submit(NewMessage(session.id, ANN, "b", "second", utc_now()), stored.append)
        with pytest.raises(Unavailable, match="max_send_wait_ms"):
            committer.admit(trio.current_time() + 0.05)  # ...not a 50 ms one
        mock_clock.jump(10)  # far past every deadline: what was admitted is stored anyway
        gate.set()  # (and the block's end lets the committer store what is queued)
    assert [r.message.client_message_id for r in stored if isinstance(r, Appended)] == [
        "first",
        "second",
    ]
    assert committer.refused_by == {"queue": 0, "backlog": 0, "late": 1}
    with pytest.raises(Unavailable, match="shutting down"):
        committer.admit(trio.current_time() + 10)


async def test_sends_are_refused_while_the_delivery_backlog_is_full(store: Store) -> None:
    """Without direct delivery (RabbitMQ: the publisher delivers), acceptance may run ahead
    of delivery only by `max_backlog` rows; once they go out, sends are taken again."""
    [(session, _)] = await sessions(store, 1)
    committer = SendCommitter(store, max_backlog=3, clock=utc_now)  # one message = 3 rows
    delivered = 0
    committer.backlog = lambda: committer.rows_written - delivered
    async with committing(committer):
        await committer.append(NewMessage(session.id, ANN, "a", "b-1", utc_now()))
        with pytest.raises(Unavailable) as refused:
            await committer.append(NewMessage(session.id, ANN, "b", "b-2", utc_now()))
        delivered = 3  # the publisher caught up
        await committer.append(NewMessage(session.id, ANN, "c", "b-3", utc_now()))
    assert refused.value.retry_after == BUSY_RETRY_AFTER
    assert [m.content for m in await store.messages_after(session.id, 0, 10)] == ["a", "c"]


# -- batch sends: one unit each ----------------------------------------------------------------


def unit(session_id: uuid.UUID, tag: str, n: int) -> list[NewMessage]:
    return [NewMessage(session_id, ANN, f"{tag}-{i}", f"{tag}-{i}", utc_now()) for i in range(n)]


async def test_batches_are_never_split_nor_interleaved_even_by_two_committers(
    store: Store,
) -> None:
    """Two committers (two instances) take single sends and batches of one session at once,
    in commits of at most 8 messages: each batch lands whole in one commit, with consecutive
    seqs, and its rows reach the sink in one call."""
    [(session, _)] = await sessions(store, 1)
    sinks = [RecordingSink(), RecordingSink()]
    committers = [SendCommitter(store, sink=s, max_batch=8, clock=utc_now) for s in sinks]
    batches: dict[str, list[Appended]] = {}

    async def batch(k: int) -> None:
        results = await committers[k % 2].append_batch(unit(session.id, f"b{k}", 3 + k % 6))
        assert all(isinstance(r, Appended) and r.created for r in results)
        batches[f"b{k}"] = [r for r in results if isinstance(r, Appended)]

    async def single(k: int) -> None:
        await committers[k % 2].append(NewMessage(session.id, ANN, "s", f"s{k}", utc_now()))

    async with committing(committers[0]), committing(committers[1]), trio.open_nursery() as nursery:
        for k in range(12):
            nursery.start_soon(batch, k)
            nursery.start_soon(single, k)
            nursery.start_soon(single, k + 100)
    stored = await store.messages_after(session.id, 0, 500)
    assert [m.seq for m in stored] == list(range(1, len(stored) + 1))
    assert len(stored) == 24 + sum(3 + k % 6 for k in range(12))
    for tag, results in batches.items():
        seqs = [r.message.seq for r in results]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), tag  # contiguous, in order
        ids = {row.id for r in results for row in r.outbox}
        calls = [c for s in sinks for c in s.calls if ids & set(c.ids)]
        assert len(calls) == 1, tag  # one publish round
        assert ids <= set(calls[0].ids)
    for sink in sinks:
        assert_session_order(sink.accepted)


async def test_a_batch_larger_than_a_commit_commits_alone_and_whole(store: Store) -> None:
    [(session, _)] = await sessions(store, 1)
    sink = RecordingSink()
    committer = SendCommitter(store, sink=sink, max_batch=4, clock=utc_now)
    done = trio.Event()
    async with committing(committer):
        # queued in this order before the committer gets to run
        committer.submit(NewMessage(session.id, ANN, "a", "a", utc_now()), lambda r: None)
        committer.submit_batch(unit(session.id, "big", 10), lambda results: None)
        committer.submit(NewMessage(session.id, ANN, "z", "z", utc_now()), lambda r: done.set())
        await done.wait()
    assert committer.batches == 3
    assert [len(c.ids) for c in sink.calls] == [3, 30, 3]
    assert [m.content for m in await store.messages_after(session.id, 0, 20)] == [
        "a",
        *(f"big-{i}" for i in range(10)),
        "z",
    ]


async def test_the_queue_and_backlog_bounds_count_a_batch_as_its_messages(
    store: Store,
) -> None:
    [(session, _)] = await sessions(store, 1)
    committer = SendCommitter(store, max_queued=5, max_backlog=10, clock=utc_now)
    backlog = 0
    committer.backlog = lambda: backlog
    async with committing(committer):
        # queued together before the committer runs: 4 messages, then 2 more do not fit
        committer.submit_batch(unit(session.id, "q", 4), lambda results: None)
        with pytest.raises(Unavailable):
            committer.submit_batch(unit(session.id, "r", 2), lambda results: None)
        stored = trio.Event()
        committer.submit(NewMessage(session.id, ANN, "s", "s", utc_now()), lambda r: stored.set())
        assert committer.queued == 5
        assert committer.refused == 2
        await stored.wait()
        assert committer.queued == 0
        # 3 rows waiting: 3 more messages fit under 10 (3 + 3 * 2), 4 would not (3 + 3 * 3)
        backlog = 3
        with pytest.raises(Unavailable) as behind:
            await committer.append_batch(unit(session.id, "t", 4))
        assert behind.value.message == BUSY_MESSAGES["backlog"]
        assert committer.refused_by == {"queue": 2, "backlog": 4, "late": 0}
        assert len(await committer.append_batch(unit(session.id, "u", 3))) == 3
    assert [m.client_message_id for m in await store.messages_after(session.id, 0, 20)] == [
        "q-0",
        "q-1",
        "q-2",
        "q-3",
        "s",
        "u-0",
        "u-1",
        "u-2",
    ]
