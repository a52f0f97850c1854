"""The outbox publisher against every storage backend, with a recording fake of the broker.

Each test states one promise of `chatd.outbox.OutboxPublisher`: a backlog is delivered in
per-session order, a new row wakes it long before its poll, failures retry with backoff and end
dead without reordering or blocking other sessions, and shutdown leaves nothing half done.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest
import trio

from chatd.domain.models import OutboxRow
from chatd.outbox import OutboxPublisher, SinkUnavailable
from chatd.outbox.publisher import whole_commits
from chatd.storage import Store
from chatd.storage.base import NewMessage

from .conftest import (
    ANN,
    T0,
    Call,
    RecordingSink,
    assert_session_order,
    config,
    no_jitter,
    running,
    send,
    sessions,
    wait_until,
)


async def test_a_backlog_of_1000_messages_is_delivered_in_session_order(store: Store) -> None:
    pairs = await sessions(store, 8)
    sink = RecordingSink()
    publisher = OutboxPublisher(store, sink, config(batch_size=100), random=no_jitter)
    async with trio.open_nursery() as nursery:  # the publisher is not running yet
        for i, (session, other) in enumerate(pairs):
            nursery.start_soon(send, store, session, other if i % 2 else ANN, 125)
    total = 1000 * 3
    assert await store.outbox_stats() == (total, 0)

    async with running(publisher):
        await wait_until(lambda: len(sink.accepted) >= total, within=30)

    assert sorted(sink.ids) == sorted(set(sink.ids))
    assert len(sink.ids) == total
    assert_session_order(sink.accepted)
    per_session = Counter(r.session_id for r in sink.accepted)
    assert set(per_session.values()) == {125 * 3}
    assert [r.seq for r in sink.accepted if r.session_id == pairs[0][0].id][:6] == [
        1,
        1,
        1,
        2,
        2,
        2,
    ]
    assert await store.outbox_stats() == (0, 0)
    assert (publisher.published, publisher.retried, publisher.dead) == (total, 0, 0)


async def test_a_new_message_wakes_the_publisher_long_before_its_poll(store: Store) -> None:
    [(session, _)] = await sessions(store, 1)
    sink = RecordingSink()
    publisher = OutboxPublisher(store, sink, config(poll_interval=5.0))
    async with running(publisher):
        # PostgreSQL's first wait only connects the store's listener; in the next one the
        # publisher is idle (for 5 s at most) and only the wake-up can bring the row in time.
        idle = 2 if store.backend == "postgres" else 1
        await wait_until(lambda: publisher.waiting and publisher.idle_waits >= idle)
        await send(store, session, ANN, 1)
        took = await wait_until(lambda: len(sink.accepted) == 3, within=4)
        assert took < 1.0  # the wake-up path; a poll would take ~5 s
        await send(store, session, ANN, 1, tag="again")
        assert await wait_until(lambda: len(sink.accepted) == 6, within=4) < 1.0
    assert await store.outbox_stats() == (0, 0)


async def test_a_failing_row_is_retried_with_backoff_and_order_is_kept(store: Store) -> None:
    (a, _), (b, b_other) = await sessions(store, 2)
    await send(store, a, ANN, 3)
    await send(store, b, b_other, 3)
    rows = await store.claim_outbox(limit=100, lease_seconds=0, now=T0)  # lease 0: just a look
    flaky = next(r for r in rows if r.session_id == a.id and r.seq == 2)  # mid-session

    def refuse(batch: list[OutboxRow]) -> bool:  # the row's first two attempts fail
        return any(r.id == flaky.id and r.retry_count < 2 for r in batch)

    sink = RecordingSink(refuse=refuse)
    publisher = OutboxPublisher(store, sink, config(backoff_base=0.1), random=no_jitter)
    async with running(publisher):
        await wait_until(lambda: len(sink.accepted) == 18)

    assert sorted(sink.ids) == sorted(r.id for r in rows)  # each once
    assert_session_order(sink.accepted)
    assert (publisher.published, publisher.retried, publisher.dead) == (18, 2, 0)
    # attempts of the flaky row alone (after a refused batch, rows go one per call)
    alone = [c for c in sink.calls if c.ids == [flaky.id]]
    tries = [alone[0].at, alone[1].at, _accepted_at(sink, flaky.id)]
    assert [c.ok for c in alone[:2]] == [False, False]
    assert tries[1] - tries[0] >= 0.1 - 0.02  # backoff_base * 2**0
    assert tries[2] - tries[1] >= 0.2 - 0.02  # backoff_base * 2**1
    # session b never waited for a's trouble; a's later rows did
    assert max(_accepted_at(sink, r.id) for r in rows if r.session_id == b.id) < tries[1]
    assert all(
        _accepted_at(sink, r.id) >= tries[2]
        for r in rows
        if r.session_id == a.id and r.id > flaky.id
    )
    assert await store.outbox_stats() == (0, 0)


async def test_a_row_the_sink_always_refuses_goes_dead_holding_back_only_its_session(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    (a, _), (b, b_other), (c, _) = await sessions(store, 3)
    for session, sender in ((a, ANN), (b, b_other), (c, ANN)):
        await send(store, session, sender, 3)
    rows = await store.claim_outbox(limit=100, lease_seconds=0, now=T0)
    poison = next(r for r in rows if r.session_id == a.id and r.seq == 2)
    sink = RecordingSink(refuse=lambda batch: any(r.id == poison.id for r in batch))
    publisher = OutboxPublisher(store, sink, config(max_attempts=3), random=no_jitter)

    with caplog.at_level(logging.WARNING, logger="chatd.outbox"):
        async with running(publisher):
            await wait_until(lambda: len(sink.accepted) == len(rows) - 1)

    assert poison.id not in sink.ids
    assert (publisher.published, publisher.retried, publisher.dead) == (26, 2, 1)
    assert await store.outbox_stats() == (0, 1)
    assert_session_order(sink.accepted)
    attempts = [call.at for call in sink.calls if call.ids == [poison.id]]
    assert len(attempts) == 3
    later = [r for r in rows if r.session_id == a.id and r.id > poison.id]
    assert min(_accepted_at(sink, r.id) for r in later) >= attempts[-1]  # held back until dead
    others = [r for r in rows if r.session_id != a.id]
    assert max(_accepted_at(sink, r.id) for r in others) < attempts[1]  # never held back
    dead = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(dead) == 1
    assert f"row {poison.id} to {poison.destination} is dead after 3 attempts" in dead[0].message
    assert "Refused: refused 1 rows" in dead[0].message


async def test_stop_finishes_the_batch_in_hand_then_returns(store: Store) -> None:
    [(session, _)] = await sessions(store, 1)
    await send(store, session, ANN, 10)  # 30 rows, batches of 12
    sink = RecordingSink(delay=0.3)
    publisher = OutboxPublisher(store, sink, config(batch_size=12))
    async with running(publisher):
        await sink.entered.wait()
        publisher.stop()  # mid-publish
    assert len(sink.accepted) == 12 == publisher.published
    assert await store.outbox_stats() == (18, 0)  # recorded: not handed out again

    rest = RecordingSink()
    async with running(OutboxPublisher(store, rest, config())):
        await wait_until(lambda: len(rest.accepted) == 18)
    assert_session_order(sink.accepted + rest.accepted)
    assert sorted(sink.ids + rest.ids) == list(range(min(sink.ids), min(sink.ids) + 30))


async def test_stop_while_idle_returns_at_once(store: Store) -> None:
    publisher = OutboxPublisher(store, RecordingSink(), config(poll_interval=60.0))
    async with running(publisher):
        await wait_until(lambda: publisher.waiting)
        start = trio.current_time()
        publisher.stop()
    assert trio.current_time() - start < 1.0


async def test_a_cancelled_publisher_gives_its_rows_back_at_once(store: Store) -> None:
    [(session, _)] = await sessions(store, 1)
    await send(store, session, ANN, 2)
    stuck = RecordingSink(delay=60.0)
    lease = config(lease_seconds=600.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(OutboxPublisher(store, stuck, lease).run)
        await stuck.entered.wait()
        nursery.cancel_scope.cancel()  # e.g. the supervisor's shutdown deadline
    assert stuck.accepted == []

    sink = RecordingSink()
    async with running(OutboxPublisher(store, sink, lease)):  # no 600 s lease to wait out
        await wait_until(lambda: len(sink.accepted) == 6, within=5)
    assert_session_order(sink.accepted)


def _accepted_at(sink: RecordingSink, row_id: int) -> float:
    return sink.accepted_at[sink.ids.index(row_id)]


async def test_an_unavailable_sink_gets_rows_back_uncharged_and_they_go_out_later(
    store: Store,
) -> None:
    (a, _), (b, b_other) = await sessions(store, 2)
    await send(store, a, ANN, 3)
    await send(store, b, b_other, 3)
    down = True

    class DownSink(RecordingSink):
        async def publish(self, rows: Sequence[OutboxRow]) -> None:
            self.calls.append(Call(trio.current_time(), [r.id for r in rows]))
            if down:
                raise SinkUnavailable("broker restarting")
            await super().publish(rows)

    sink = DownSink()
    publisher = OutboxPublisher(
        store, sink, config(max_attempts=1, poll_interval=0.05), random=no_jitter
    )
    async with running(publisher):
        await wait_until(lambda: len(sink.calls) >= 5)  # several rounds refused
        assert (publisher.retried, publisher.dead) == (0, 0)
        assert await store.outbox_stats() == (18, 0)  # nothing charged, nothing dead
        down = False
        await wait_until(lambda: len(sink.accepted) == 18)
    assert_session_order(sink.accepted)
    assert await store.outbox_stats() == (0, 0)
    assert (publisher.published, publisher.retried, publisher.dead) == (18, 0, 0)


async def test_a_claim_ending_inside_a_batch_send_gives_its_rows_back_to_lead_the_next(
    store: Store,
) -> None:
    """Rows of one commit of a session (a batch send) go out in one sink call (one confirm
    round with RabbitMQ) even when a full claim would have cut through them."""
    (a, _), (b, _) = await sessions(store, 2)
    await send(store, a, ANN, 2)  # 6 rows first
    later = datetime(2025, 1, 1, 0, 0, 1, tzinfo=UTC)
    unit = [NewMessage(b.id, ANN, f"u{i}", f"unit-{i}", later) for i in range(4)]  # 12 rows
    await store.append_messages(unit, units=[4])
    sink = RecordingSink()
    publisher = OutboxPublisher(
        store, sink, config(batch_size=5), random=no_jitter, min_claim=12
    )  # claims of 12: the first ends inside the unit
    async with running(publisher):
        await wait_until(lambda: len(sink.accepted) == 18, within=10)
    unit_ids = {r.id for r in sink.accepted if r.session_id == b.id}
    assert [len(c.ids) for c in sink.calls] == [6, 12]
    assert set(sink.calls[1].ids) == unit_ids
    assert_session_order(sink.accepted)
    assert await store.outbox_stats() == (0, 0)


def test_whole_commits_gives_back_only_a_trailing_commit_of_a_full_claim() -> None:
    one, two = uuid.uuid4(), uuid.uuid4()
    t1, t2 = T0, datetime(2025, 1, 1, 0, 0, 1, tzinfo=UTC)

    def row(i: int, session: uuid.UUID, at: datetime) -> OutboxRow:
        return OutboxRow(i, None, session, 1, "message", "/topic/x", "{}", 0, at, None, at)

    rows = [row(1, one, t1), row(2, two, t2), row(3, one, t2), row(4, two, t2), row(5, two, t2)]
    assert whole_commits(rows, full=False) == (rows, [])  # not full: nothing was cut
    assert whole_commits(rows, full=True) == (rows[:3], [rows[3], rows[4]])
    assert whole_commits(rows[1:2], full=True) == (rows[1:2], [])  # one commit: keep it
    assert whole_commits([], full=True) == ([], [])
