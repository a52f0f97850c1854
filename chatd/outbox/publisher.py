"""The outbox publisher: the one path from committed outbox rows to subscribers.

Why an outbox at all: a message and its outbox rows commit in one transaction, so once a send
is acknowledged nothing can lose its delivery — not a crash, not a broker restart. This task
then moves the rows to an `OutboxSink` *at least once* and in order. It is a sibling task in
the supervisor, one per process; several processes may run one each on a database.

One round: claim a batch (a lease, `[outbox] lease_seconds`) → hand it to the sink → record the
outcome (sent, failed with a backoff or dead, or given back). Between rounds it sleeps until
`Store.wait_for_outbox` says rows may have arrived (LISTEN/NOTIFY, or SQLite's in-process
signal), a retry falls due, or `poll_interval` passes — the wake-up makes delivery prompt, the
poll makes it certain (a lost notification, rows written by an older build, a lease that ran out
in a crashed process).

Ordering is the store's job and the reason rows are only ever marked, never skipped: a claim is
a per-session prefix of what is left (`chatd.storage.base.claimable`), and a failed row stays
unprocessed with ``next_retry_at`` in the future, so every later row of its session is held back
until it is sent or dead, in this process or any other; other sessions are unaffected. Several
publishers never hold one row at once because claims use ``FOR UPDATE SKIP LOCKED`` and the lease.
The lease only protects us while we are quick, so every sink call of a round must finish within
`SINK_SHARE` of it; the rest of the lease is left for recording the outcome.

When the sink refuses a batch we cannot tell which row it choked on, so the batch is retried one
row per call: a failing row is charged an attempt, the rest of its session is given back
untried, and other sessions' rows still go out. The retry rules are in `chatd.outbox.retry`.
A sink that raises `SinkUnavailable` (RabbitMQ down) gets the whole rest of the round back
uncharged, and the publisher then polls instead of waking on every new row until it recovers.

Shutdown: `stop()` lets the batch in hand finish (published and recorded), then `run` returns.
If the task is cancelled instead, a final, shielded flush records what the sink already accepted
and gives back the rest, so another publisher need not wait out the lease.
"""

from __future__ import annotations

import functools
import logging
import math
import random as _random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from uuid import UUID

import trio

from chatd.config import OutboxConfig
from chatd.domain.errors import Unavailable
from chatd.domain.models import OutboxRow
from chatd.observability import tracing
from chatd.outbox.retry import backoff_delay, plan_failure
from chatd.outbox.sink import OutboxSink, SinkUnavailable
from chatd.storage.base import Store

log = logging.getLogger("chatd.outbox")

Clock = Callable[[], datetime]
Random = Callable[[], float]

SINK_SHARE = 0.5  # of the lease: the sink's time budget per round
FINAL_FLUSH_TIMEOUT = 2.0  # seconds a cancelled round may spend recording what it did
BLOCKED_WINDOW = 2.0  # seconds a signalled row may wait behind the committer's leased rows
PENDING_REFRESH = 0.5  # seconds between reads of the store-wide pending count (on_store_pending)


def utc_now() -> datetime:
    """The default clock: the wall clock, timezone-aware UTC."""
    return datetime.now(UTC)


def whole_commits(rows: list[OutboxRow], *, full: bool) -> tuple[list[OutboxRow], list[OutboxRow]]:
    """(rows to publish now, rows to give back): a full claim may end inside the rows one
    commit wrote for one session (a batch send, one unit), so its trailing group of rows of
    the same session and commit time is given back to lead the next claim, and the batch
    goes out in one round (one confirm round with RabbitMQ) — unless that group is the
    whole claim. Order is safe: they are the tail of their session in this claim."""
    if not full or not rows:
        return rows, []
    last = rows[-1]
    cut = len(rows)
    while cut > 0 and (rows[cut - 1].session_id, rows[cut - 1].created_at) == (
        last.session_id,
        last.created_at,
    ):
        cut -= 1
    if cut == 0:
        return rows, []
    return rows[:cut], rows[cut:]


def describe(exc: BaseException) -> str:
    """The text stored as a row's ``last_error``: the exception type and its message."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass(slots=True)
class _Outcome:
    """What one round did with its rows; only `_settle` turns it into store writes."""

    sent: list[OutboxRow] = field(default_factory=list)
    failed: list[tuple[OutboxRow, Exception]] = field(default_factory=list)
    released: list[OutboxRow] = field(default_factory=list)
    unavailable: bool = False  # the sink said SinkUnavailable


class OutboxPublisher:
    """Publishes outbox rows from `store` to `sink`; a supervisor part (`run`, `stop`).

    `clock` gives the aware UTC time used for leases and retry times (injectable so tests and
    the store agree on "now"); `random` returns floats in [0, 1] for the retry jitter (a constant
    1.0 turns jitter off). `min_claim` raises the claim size to at least the rows of one
    commit of a session (a batch send's rows go out in one round: see `whole_commits`).
    Counters for metrics: `published` rows accepted by the sink, `retried` failed attempts
    scheduled again, `dead` rows given up.
    """

    def __init__(
        self,
        store: Store,
        sink: OutboxSink,
        config: OutboxConfig,
        *,
        clock: Clock = utc_now,
        random: Random = _random.random,
        min_claim: int = 0,
        tracer: tracing.Tracer | None = None,
    ) -> None:
        self._store = store
        self._claim = max(config.batch_size, min_claim)
        self._sink = sink
        self._config = config
        self._clock = clock
        self._random = random
        self._stopping = False
        self._pause_scope: trio.CancelScope | None = None
        # Until when a claim that found nothing right after new rows were signalled may have
        # left them waiting behind rows leased elsewhere in this process (the send
        # committer's, marked sent within a batch or two), which `nudge` announces.
        self._maybe_blocked_until = -math.inf
        self._signalled = False
        self._retry_due: datetime | None = None
        self._sink_down = False
        self.published = 0
        self.retried = 0
        self.dead = 0
        #: How many times it has started waiting for the store to signal new rows, and whether
        #: it waits now: a test's condition for "idle, so the next row comes by the wake-up".
        self.idle_waits = 0
        self.waiting = False
        #: Told, per round, each sent row's seconds from its commit to the sink (metrics).
        self.on_published: Callable[[list[float]], None] | None = None
        #: Set when tracing is on: each message of a round gets an ``outbox publish`` span in
        #: its trace (from the row's trace context), parent of the sink's spans.
        self.tracer = tracer
        #: When set, told the rows pending in the whole store (every instance's) at most every
        #: PENDING_REFRESH s: with several instances the publishers take each other's rows, so
        #: only the store knows how far delivery is behind (the send committer's backlog).
        self.on_store_pending: Callable[[int], None] | None = None
        self._pending_read_at = -math.inf

    def stop(self) -> None:
        """Ask `run` to return after the batch in hand is published and recorded."""
        self._stopping = True
        if self._pause_scope is not None:
            self._pause_scope.cancel()

    def nudge(self) -> None:
        """Rows leased to another part of this process were marked sent: claim again now if
        rows signalled earlier found nothing to claim (they may have waited behind those)."""
        if (
            trio.current_time() < self._maybe_blocked_until
            and self._pause_scope is not None
            and not self._stopping
        ):
            self._pause_scope.cancel()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Publish until `stop()` (or cancellation). Never ends because the store is down:
        that is logged and retried with backoff. Exceptions of the sink are failures of the
        rows, never of the task."""
        task_status.started()
        outages = 0
        while not self._stopping:
            try:
                again = await self._round()
            except Unavailable as exc:
                delay = self._outage_delay(outages)
                outages += 1
                log.warning("outbox: %s; trying again in %.2f s", exc, delay)
                await self._pause(delay, wake=False)
                continue
            if outages:
                log.info("outbox: store reachable again after %d failed attempts", outages)
                outages = 0
            if not again:
                await self._pause(self._idle_timeout(), wake=not self._sink_down)
        log.info(
            "outbox publisher stopped: published=%d retried=%d dead=%d",
            self.published,
            self.retried,
            self.dead,
        )

    # -- one round ---------------------------------------------------------------------------

    async def _round(self) -> bool:
        """Claim, publish and record one batch; True to go again at once. Raises Unavailable."""
        if (
            self.on_store_pending is not None
            and trio.current_time() - self._pending_read_at >= PENDING_REFRESH
        ):
            self._pending_read_at = trio.current_time()
            pending, _dead = await self._store.outbox_stats()
            self.on_store_pending(pending)
        now = self._clock()
        if self._retry_due is not None and self._retry_due <= now:
            self._retry_due = None
        rows = await self._store.claim_outbox(
            limit=self._claim, lease_seconds=self._config.lease_seconds, now=now
        )
        if not rows and self._signalled:
            self._maybe_blocked_until = trio.current_time() + BLOCKED_WINDOW
        self._signalled = False
        if not rows:
            return False
        full = len(rows) >= self._claim
        rows, held_back = whole_commits(sorted(rows, key=lambda r: r.id), full=full)
        outcome = _Outcome(released=held_back)
        try:
            if self.tracer is None:
                await self._deliver(rows, outcome)
            else:
                await self._deliver_traced(self.tracer, rows, outcome)
        except BaseException:
            with trio.CancelScope(shield=True), trio.move_on_after(FINAL_FLUSH_TIMEOUT):
                await self._flush_cancelled([*rows, *held_back], outcome)
            raise
        await self._settle(outcome)
        if outcome.unavailable != self._sink_down:
            self._sink_down = outcome.unavailable
            log.log(
                logging.WARNING if outcome.unavailable else logging.INFO,
                "outbox: sink %s",
                "unavailable: rows wait" if outcome.unavailable else "available again",
            )
        # a full batch means more may be waiting: go again at once, unless nothing went out
        # (a sink that is down would otherwise make us sweep the whole backlog, charging heads)
        return full and bool(outcome.sent)

    async def _deliver(self, rows: Sequence[OutboxRow], outcome: _Outcome) -> None:
        """Hand `rows` to the sink as one call; if it fails, row by row (see the module doc)."""
        deadline = trio.current_time() + self._config.lease_seconds * SINK_SHARE
        try:
            with trio.fail_at(deadline):
                await self._sink.publish(rows)
        except SinkUnavailable:
            outcome.released.extend(rows)
            outcome.unavailable = True
            return
        except Exception as exc:
            if len(rows) == 1:
                outcome.failed.append((rows[0], exc))
                return
            log.debug("outbox: batch of %d refused (%s): row by row", len(rows), describe(exc))
        else:
            outcome.sent.extend(rows)
            return
        held: set[UUID] = set()
        for index, row in enumerate(rows):
            if outcome.unavailable:
                outcome.released.extend(rows[index:])
                return
            if row.session_id in held:
                outcome.released.append(row)  # behind a failed row: untried, not charged
                continue
            try:
                with trio.fail_at(deadline):
                    await self._sink.publish([row])
            except SinkUnavailable:
                outcome.released.append(row)
                outcome.unavailable = True
            except Exception as exc:
                outcome.failed.append((row, exc))
                held.add(row.session_id)
            else:
                outcome.sent.append(row)

    async def _deliver_traced(
        self, tracer: tracing.Tracer, rows: Sequence[OutboxRow], outcome: _Outcome
    ) -> None:
        """`_deliver` inside the round's spans; a message whose row failed or was given back
        says so on its span."""
        with tracing.publish_round(tracer, rows, path="publisher") as traced:
            await self._deliver(traced.rows, outcome)
            for row, exc in outcome.failed:
                if (span := traced.span_of(row)) is not None:
                    span.fail(exc)
            for row in outcome.released:
                if (span := traced.span_of(row)) is not None:
                    span.set("chatd.outbox.released", True)

    async def _settle(self, outcome: _Outcome) -> None:
        """Record a round: sent first (unblocks sessions), then failures, then give-backs."""
        now = self._clock()
        if outcome.sent:
            ids = [r.id for r in outcome.sent]
            await self._persist(functools.partial(self._store.mark_outbox_sent, ids, now=now))
            self.published += len(ids)
            if self.on_published is not None:
                self.on_published([(now - r.created_at).total_seconds() for r in outcome.sent])
        for row, exc in outcome.failed:
            await self._record_failure(row, exc, now)
        if outcome.released:
            ids = [r.id for r in outcome.released]
            await self._persist(functools.partial(self._store.release_outbox, ids, now=now))

    async def _record_failure(self, row: OutboxRow, exc: Exception, now: datetime) -> None:
        failure = plan_failure(row.retry_count, self._config, now=now, rand=self._random())
        error = describe(exc)
        await self._persist(
            functools.partial(
                self._store.mark_outbox_failed,
                row.id,
                error=error,
                next_retry_at=failure.next_retry_at,
                dead=failure.dead,
            )
        )
        if failure.dead:
            self.dead += 1
            log.error(
                "outbox: row %d to %s is dead after %d attempts; last error: %s",
                row.id,
                row.destination,
                failure.attempts,
                error,
            )
            return
        self.retried += 1
        if self._retry_due is None or failure.next_retry_at < self._retry_due:
            self._retry_due = failure.next_retry_at
        log.warning(
            "outbox: row %d to %s failed (attempt %d of %d), retry at %s: %s",
            row.id,
            row.destination,
            failure.attempts,
            self._config.max_attempts,
            failure.next_retry_at.isoformat(),
            error,
        )

    async def _flush_cancelled(self, rows: Sequence[OutboxRow], outcome: _Outcome) -> None:
        """After a cancelled delivery: keep what the sink accepted, give back the rest now
        rather than at the end of the lease. Failures are not charged: we were interrupted."""
        accepted = {r.id for r in outcome.sent}
        rest = [r.id for r in rows if r.id not in accepted]
        now = self._clock()
        try:
            if accepted:
                await self._store.mark_outbox_sent(sorted(accepted), now=now)
                self.published += len(accepted)
            if rest:
                await self._store.release_outbox(rest, now=now)
        except Unavailable:
            log.warning(
                "outbox: store unavailable at shutdown; %d rows wait for their lease", len(rows)
            )

    async def _persist(self, write: Callable[[], Awaitable[None]]) -> None:
        """Run a store write that records what the sink already did, retrying while the store
        is down: giving up would make those rows go out again after the lease. Once stopping,
        a failed write raises Unavailable instead (the lease then covers it)."""
        failures = 0
        while True:
            try:
                await write()
                return
            except Unavailable as exc:
                if self._stopping:
                    raise
                delay = self._outage_delay(failures)
                failures += 1
                log.warning("outbox: recording a round: %s; again in %.2f s", exc, delay)
                await self._pause(delay, wake=False)

    # -- waiting ----------------------------------------------------------------------------

    def _outage_delay(self, failures: int) -> float:
        c = self._config
        return backoff_delay(failures, base=c.backoff_base, cap=c.backoff_cap, rand=self._random())

    def _idle_timeout(self) -> float:
        """Until the next poll, or sooner when one of our failed rows falls due."""
        timeout = self._config.poll_interval
        if self._retry_due is not None:
            due_in = (self._retry_due - self._clock()).total_seconds()
            timeout = min(timeout, max(0.0, due_in))
        return timeout

    async def _pause(self, seconds: float, *, wake: bool) -> None:
        """Sleep up to `seconds`; `wake` also returns when the store signals new rows. `stop()`
        ends the pause at once."""
        with trio.move_on_after(seconds) as scope:
            self._pause_scope = scope
            try:
                if self._stopping:
                    scope.cancel()
                if wake:
                    self.idle_waits += 1
                    self.waiting = True
                    await self._store.wait_for_outbox()
                    self._signalled = True
                else:
                    await trio.sleep_forever()
            except Unavailable:
                await trio.sleep_forever()  # the poll timeout still ends this pause
            finally:
                self._pause_scope = None
                self.waiting = False
