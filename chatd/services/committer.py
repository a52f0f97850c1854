"""The send path's one writer: group commit, delivery right after it, and a bounded queue.

Measured before this existed (issue 11): every send was its own worker-thread hop and its own
transaction (~15 % of the trio thread at 300 msg/s, plus a commit per message), and delivery
waited for the outbox publisher's claim and mark round trips, which starved under load: past
~350 msg/s chatd accepted messages faster than it delivered them.

Now concurrent sends (REST and STOMP alike) queue here and one task stores whatever is
waiting as ONE batch (`Store.append_messages`: one hop, one transaction, a handful of
statements whatever the batch size). Several batches committing at once on disjoint sessions
was tried and measured worse (smaller batches, more CPU per message, p99 at 500 msg/s 72 ms
against 20 ms): the commit's disk wait is shared by the messages of one batch instead.

With direct delivery (a `sink`: one instance, no RabbitMQ bridge) the batch's outbox rows are
written already leased to this task, handed to the sink (the local broker) right after the
commit, and marked sent in the next batch's transaction (or on their own when no batch
follows). The outbox stays the safety net: rows whose delivery or mark did not happen
(a crash, a sink error) are published by the outbox publisher when the lease runs out, so
delivery stays at-least-once, and the LocalDelivery seq mark drops topic repeats. Ordering
holds because one task commits and delivers batch after batch: a session's rows leave in seq
order, and a receipt row (written by `mark`, published by the publisher) is held back by
the claim's per-session prefix rule until the messages before it are marked sent.

With several instances (RabbitMQ) delivery stays with the publisher, whose claim keeps the
per-session order across instances; the batching still applies.

Delivery can never fall behind acceptance: the next batch is not taken before the last one
was delivered. What bounds the latency of an accepted send is admission (`admit`, before the
send's checks): a send is refused at once (`Unavailable`, 503 with Retry-After over REST, an
error with ``retryAfter`` over STOMP) past `max_queued` waiting sends, while more than
`max_backlog` outbox rows this process wrote wait for delivery (with RabbitMQ, for the
outbox publisher: acceptance never runs ahead of delivery by more than that), and when it
would not be stored by its deadline (``[limits] max_send_wait_ms`` after it was received,
guessed from how long the oldest waiting send has waited). A send admitted is stored: it is
never refused after the work of its checks was done.

A batch send (`append_batch`, `submit_batch`) is one unit: it is queued whole or refused
whole, counts as its messages against `max_queued` and (at `ROWS_PER_MESSAGE` rows each)
against `max_backlog`, is never split across commits (a unit larger than `max_batch` commits
alone) and reaches the store as one `units` entry, so its messages are stored all or none,
with consecutive seqs that no other send of the session, from this or another instance, can
come between: the session's row lock orders whole transactions.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from typing import Final

import trio

from chatd.domain.errors import ChatError, Unavailable
from chatd.domain.models import ROWS_PER_MESSAGE, OutboxRow
from chatd.observability import tracing
from chatd.outbox.sink import OutboxSink
from chatd.storage.base import Appended, AppendResult, NewMessage, Store

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]

#: Messages stored per transaction at most.
DEFAULT_MAX_BATCH: Final = 128
#: Messages waiting for their batch before new sends are refused (a batch send counts as
#: its messages).
DEFAULT_MAX_QUEUED: Final = 256
#: Outbox rows written and not yet delivered (`backlog`) past which sends are refused: with
#: RabbitMQ the publisher delivers, and without this bound the committer accepted ~1 000
#: msg/s while the relay delivered ~400 (bench workers), a backlog growing without end.
DEFAULT_MAX_BACKLOG: Final = 3000
#: Seconds a refused sender is told to wait (Retry-After).
BUSY_RETRY_AFTER: Final = 1.0
#: Seconds between attempts to mark delivered rows sent while the store is down.
MARK_RETRY: Final = 1.0
#: Why a send is refused busy, each with its reason label (``chatd_sends_refused_busy_total``)
#: and what the sender is told: the three bounds differ in what an operator does about them.
BUSY_MESSAGES: Final = {
    "queue": "server busy: too many messages waiting to be stored; retry shortly",
    "backlog": "server busy: delivery is behind (too many stored messages not yet "
    "delivered); retry shortly",
    "late": "server busy: messages wait longer than max_send_wait_ms to be stored; retry shortly",
}
_UNTRACED: Final = contextlib.nullcontext()
_DB_SYSTEM: Final = {"postgres": "postgresql", "sqlite": "sqlite"}


#: Told a queued unit's results, one per message, from the committer's task.
UnitCallback = Callable[[list[AppendResult]], None]


class _Waiter:
    """One queued unit (a send, or a batch send's messages) and, once its batch committed,
    its results (told to `on_done` too)."""

    __slots__ = ("done", "items", "on_done", "queued_at", "results")

    def __init__(
        self, items: Sequence[NewMessage], queued_at: float, on_done: UnitCallback | None
    ) -> None:
        self.items = items
        self.queued_at = queued_at
        self.on_done = on_done
        self.results: list[AppendResult] = []
        self.done = trio.Event()

    def settle(self, results: list[AppendResult]) -> None:
        self.results = results
        self.done.set()
        if self.on_done is not None:
            try:
                self.on_done(results)
            except Exception:  # a bug in a callback must not stop the batches
                log.exception("a send's completion callback failed")

    def fail(self, error: ChatError) -> None:
        self.settle([error] * len(self.items))


class SendCommitter:
    """Queues sends, commits them in batches, and (with `sink`) delivers them at once.

    A supervisor part: `run` until cancelled. `append` / `submit` are what the chat service
    calls per send, `append_batch` / `submit_batch` per batch send. Counters for metrics:
    `batches`, `committed` (messages), `published` (outbox rows the sink accepted), `refused`
    and `queued` (messages, waiting now).
    """

    def __init__(
        self,
        store: Store,
        *,
        sink: OutboxSink | None = None,
        lease_seconds: float = 30.0,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_queued: int = DEFAULT_MAX_QUEUED,
        max_backlog: int = DEFAULT_MAX_BACKLOG,
        clock: Clock,
        tracer: tracing.Tracer | None = None,
    ) -> None:
        self._store = store
        #: Where rows go right after the commit (None: leave them to the outbox publisher).
        self.sink = sink
        self._lease = timedelta(seconds=lease_seconds)
        self.max_batch = max_batch
        self.max_queued = max_queued
        self._clock = clock
        self._queue: list[_Waiter] = []
        self._queued = 0  # messages in `_queue`
        self._wake = trio.Event()
        self._delivered: list[int] = []  # outbox ids delivered and not yet marked sent
        self._committing_since: float | None = None  # trio time the batch in hand started
        self._running = False
        self._stopping = False
        self.batches = 0
        self.committed = 0
        self.rows_written = 0
        self.published = 0
        #: Outbox rows this process wrote and has not delivered yet; with RabbitMQ the outbox
        #: publisher delivers them, so the supervisor points this at its count too.
        self.backlog: Callable[[], int] = lambda: self.rows_written - self.published
        self.max_backlog = max_backlog
        self.refused = 0
        #: `refused` by reason (the keys of `BUSY_MESSAGES`).
        self.refused_by: Counter[str] = Counter(dict.fromkeys(BUSY_MESSAGES, 0))
        #: Told, per delivery, each row's seconds from its commit to the sink (metrics).
        self.on_published: Callable[[list[float]], None] | None = None
        #: Called after delivered rows were marked sent (the publisher may claim what waited
        #: behind them: receipts of the same sessions).
        self.on_marked: Callable[[], None] | None = None
        #: When tracing is on: each send's trace gets a span of its batch's commit (the
        #: batch's others linked) and, with a sink, of the publish round after it.
        self.tracer = tracer

    def stop(self) -> None:
        """Let `run` store what is queued, mark what it delivered, and return; sends from now
        on are refused (Unavailable)."""
        self._stopping = True
        self._wake.set()

    @property
    def queued(self) -> int:
        """Messages waiting for their batch now (a batch send counts as its messages)."""
        return self._queued

    def admit(self, deadline: float, messages: int = 1) -> None:
        """Refuse at once (Unavailable, busy, with `retry_after`) a send of `messages` that
        could not be queued now or would not be stored by `deadline` (trio time: arrival
        plus ``[limits] max_send_wait_ms``); return when it may go on.

        Called before the send's checks, so a refusal costs next to nothing. The wait ahead
        is guessed from the wait behind: the batch committing now, or the oldest unit still
        queued, has waited that long already. A send admitted is stored however long it
        then waits: refusing it after its checks and its queueing threw that work away, and
        under a starved CPU (the soak: 150 msg/s offered, every check and every retry paid
        and then refused late) the server stored 8 messages a second.
        """
        self._check_room(messages)
        now = trio.current_time()
        since = min(
            self._queue[0].queued_at if self._queue else now,
            now if self._committing_since is None else self._committing_since,
        )
        if now + (now - since) > deadline:
            raise self._busy("late", messages)

    async def append(self, item: NewMessage) -> Appended:
        """Store `item` with the next batch; its `Appended`. Raises what the store said of it
        (NotFound, Forbidden), Unavailable when the store is down, the committer is not
        running or too many sends wait already (then at once, busy, with `retry_after`)."""
        [result] = await self.append_batch((item,))
        if isinstance(result, ChatError):
            raise result
        return result

    async def append_batch(self, items: Sequence[NewMessage]) -> list[AppendResult]:
        """Store `items` as one unit (all or nothing, consecutive seqs, one commit) with the
        next batch; one result per item (`Store.append_messages` with `units`). Raises
        Unavailable at once like `append`; a refusal after queueing (store down) is every
        item's result."""
        waiter = self._enqueue(items, None)
        # Cancelled here, the messages may still be stored with the batch: a client that
        # retries with the same clientMessageIds gets the originals, never second copies.
        await waiter.done.wait()
        return waiter.results

    def submit(self, item: NewMessage, on_done: Callable[[AppendResult], None]) -> None:
        """`append` without waiting: queue `item` (in order with every other send) and call
        `on_done` with its result from this committer's task once its batch committed (or
        failed). `on_done` must not block. Raises Unavailable at once as `append` does."""
        self._enqueue((item,), lambda results: on_done(results[0]))

    def submit_batch(self, items: Sequence[NewMessage], on_done: UnitCallback) -> None:
        """`append_batch` without waiting, as `submit` is to `append`."""
        self._enqueue(items, on_done)

    def _check_room(self, messages: int) -> None:
        """Refuse (Unavailable) a unit of `messages` the bounds have no room for. A unit of
        n is admitted when each of its messages would be, queued one after the other: room
        for all n, and the backlog with the rows of the n-1 before the last."""
        if not self._running or self._stopping:
            raise Unavailable("server shutting down" if self._stopping else "store unavailable")
        if self._queued + messages > self.max_queued:
            raise self._busy("queue", messages)
        if self.backlog() + ROWS_PER_MESSAGE * (messages - 1) >= self.max_backlog:
            raise self._busy("backlog", messages)

    def _enqueue(self, items: Sequence[NewMessage], on_done: UnitCallback | None) -> _Waiter:
        n = len(items)
        self._check_room(n)
        waiter = _Waiter(items, trio.current_time(), on_done)
        self._queue.append(waiter)
        self._queued += n
        self._wake.set()
        return waiter

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Commit (and deliver) batches until cancelled; sends still queued then are answered
        Unavailable. A store outage fails the batch in hand (its senders get Unavailable) and
        never ends the task."""
        self._running = True
        task_status.started()
        try:
            while True:
                if not self._queue:
                    if self._delivered and await self._mark_delivered():
                        continue
                    if self._stopping:
                        return
                    # while a mark waits for the store to come back, retry now and then
                    with trio.move_on_after(MARK_RETRY if self._delivered else math.inf):
                        await self._wake.wait()
                    if self._wake.is_set():
                        self._wake = trio.Event()
                    continue
                await self._commit(self._take())
        finally:
            self._running = False
            for waiter in self._queue:
                waiter.fail(Unavailable("server shutting down"))
            self._queue.clear()
            self._queued = 0

    def _busy(self, reason: str, messages: int) -> Unavailable:
        """The refusal of `messages` busy for `reason`, counted."""
        self.refused += messages
        self.refused_by[reason] += messages
        return Unavailable(BUSY_MESSAGES[reason], retry_after=BUSY_RETRY_AFTER)

    def _take(self) -> list[_Waiter]:
        """The next batch: whole units from the head of the queue, up to `max_batch`
        messages (at least one unit, however large)."""
        take = count = 0
        for waiter in self._queue:
            if take and count + len(waiter.items) > self.max_batch:
                break
            take += 1
            count += len(waiter.items)
        batch = self._queue[:take]
        del self._queue[:take]
        self._queued -= count
        return batch

    async def _commit(self, batch: list[_Waiter]) -> None:
        self._committing_since = trio.current_time()
        try:
            await self._commit_and_deliver(batch)
        finally:
            self._committing_since = None

    async def _commit_and_deliver(self, batch: list[_Waiter]) -> None:
        now = self._clock()
        direct = self.sink is not None
        marks, self._delivered = self._delivered, []
        items = [item for w in batch for item in w.items]
        try:
            with self._commit_spans(items):
                results = await self._store.append_messages(
                    items,
                    units=[len(w.items) for w in batch],
                    lease_until=now + self._lease if direct else None,
                    sent=marks,
                    now=now,
                )
        except BaseException as exc:
            self._delivered = marks + self._delivered  # still leased: try again later
            error = exc if isinstance(exc, Unavailable) else Unavailable("store unavailable")
            if not isinstance(exc, Unavailable | trio.Cancelled):
                log.exception(
                    "storing a batch of %d messages failed", sum(len(w.items) for w in batch)
                )
            for waiter in batch:
                waiter.fail(error)
            if isinstance(exc, Exception):
                return
            raise
        self.batches += 1
        if marks and self.on_marked is not None:
            self.on_marked()
        rows: list[OutboxRow] = []
        start = 0
        for waiter in batch:
            mine = results[start : start + len(waiter.items)]
            start += len(waiter.items)
            for result in mine:
                if isinstance(result, Appended) and result.created:
                    self.committed += 1
                    self.rows_written += len(result.outbox)
                    rows.extend(result.outbox)
            waiter.settle(mine)
        # every row of the batch in one call: a batch send's rows go out in one round
        if rows and self.sink is not None:
            await self._deliver(sorted(rows, key=lambda r: r.id))

    def _commit_spans(self, items: Sequence[NewMessage]) -> AbstractContextManager[object]:
        """Spans ``store commit``, one per traced send of the batch (nothing when off)."""
        if self.tracer is None:
            return _UNTRACED
        backend = self._store.backend
        return tracing.spans_of(
            self.tracer,
            "store commit",
            (i.trace_context for i in items),
            kind="client",
            attributes={
                "db.system.name": _DB_SYSTEM.get(backend, backend),
                "db.operation.name": "append_messages",
                "chatd.batch.size": len(items),
            },
        )

    async def _deliver(self, rows: Sequence[OutboxRow]) -> None:
        assert self.sink is not None
        try:
            if self.tracer is None:
                await self.sink.publish(rows)
            else:
                with tracing.publish_round(self.tracer, rows, path="direct") as traced:
                    await self.sink.publish(traced.rows)
        except Exception as exc:  # the rows stay leased: the publisher takes them later
            log.warning(
                "delivering %d outbox rows right after commit failed (%r); the "
                "outbox publisher sends them when their lease ends",
                len(rows),
                exc,
            )
            return
        self._delivered.extend(r.id for r in rows)
        self.published += len(rows)
        if self.on_published is not None:
            now = self._clock()
            self.on_published([(now - r.created_at).total_seconds() for r in rows])

    async def _mark_delivered(self) -> bool:
        """Mark what was delivered sent, on its own (no batch to carry it); False when the
        store is down (the rows stay leased, and are marked with a later batch or retry)."""
        ids, self._delivered = self._delivered, []
        try:
            await self._store.mark_outbox_sent(ids, now=self._clock())
        except Unavailable:
            self._delivered = ids + self._delivered
            return False
        if self.on_marked is not None:
            self.on_marked()
        return True
