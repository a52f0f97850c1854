"""Helpers for the outbox publisher tests: a recording sink, people, a running publisher.

The sink is a small fake of the external thing the publisher feeds (the broker), so these tests
drive the real publisher against real stores and look only at what reached the "broker" and what
the store says afterwards.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
import trio

from chatd.config import OutboxConfig
from chatd.domain.models import ChatSession, Message, OutboxRow, Participant
from chatd.outbox import OutboxPublisher
from chatd.storage import Store, open_store
from chatd.storage.base import append_one

from ...waiting import wait_until as wait_until

T0 = datetime(2025, 1, 1, tzinfo=UTC)  # in the past: rows are due at once (sent_at)
ANN = Participant("100", "ann@example.com", "Ann")


def person(i: int) -> Participant:
    return Participant(f"{200 + i}", f"user{i}@example.com", f"User {i}")


def no_jitter() -> float:
    return 1.0


class Refused(Exception):
    """What a failing fake sink raises."""


@dataclass
class Call:
    at: float  # trio time when the call started
    ids: list[int]
    ok: bool = False


@dataclass
class RecordingSink:
    """Accepts rows all-or-nothing, remembering every call and the rows it accepted, in order.

    `refuse(rows)` returns True to make the call fail; `delay` makes each call take that long.
    It also checks that no row is ever in two calls at the same time (two publishers).
    """

    refuse: Callable[[Sequence[OutboxRow]], bool] = lambda rows: False
    delay: float = 0.0
    accepted: list[OutboxRow] = field(default_factory=list)
    accepted_at: list[float] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    in_flight: set[int] = field(default_factory=set)
    overlaps: list[int] = field(default_factory=list)
    entered: trio.Event = field(default_factory=trio.Event)

    async def publish(self, rows: Sequence[OutboxRow]) -> None:
        call = Call(trio.current_time(), [r.id for r in rows])
        self.calls.append(call)
        ids = set(call.ids)
        self.overlaps.extend(ids & self.in_flight)
        self.in_flight |= ids
        self.entered.set()
        try:
            await trio.sleep(self.delay)
            if self.refuse(rows):
                raise Refused(f"refused {len(rows)} rows")
            call.ok = True
            self.accepted.extend(rows)
            self.accepted_at.extend([trio.current_time()] * len(rows))
        finally:
            self.in_flight -= ids

    @property
    def ids(self) -> list[int]:
        return [r.id for r in self.accepted]


@asynccontextmanager
async def running(publisher: OutboxPublisher) -> AsyncIterator[OutboxPublisher]:
    """Run `publisher` for the body of the block, then stop it and wait for it to return."""
    done = trio.Event()

    async def run(*, task_status: trio.TaskStatus[None]) -> None:
        try:
            await publisher.run(task_status=task_status)
        finally:
            done.set()

    async with trio.open_nursery() as nursery:
        await nursery.start(run)
        try:
            yield publisher
        finally:
            publisher.stop()
            with trio.fail_after(10):
                await done.wait()


def config(**changes: float) -> OutboxConfig:
    """A test `[outbox]` section: small batches and a fast retry unless told otherwise."""
    values: dict[str, float] = {
        "batch_size": 50,
        "lease_seconds": 10.0,
        "poll_interval": 0.5,
        "max_attempts": 5,
        "backoff_base": 0.05,
        "backoff_cap": 1.0,
    }
    values.update(changes)
    return OutboxConfig(**values)  # type: ignore[arg-type]


async def sessions(store: Store, n: int) -> list[tuple[ChatSession, Participant]]:
    """`n` sessions of ANN with user0..; each paired with its other participant."""
    found = []
    for i in range(n):
        other = person(i)
        found.append((await store.get_or_create_session("dating", ANN, other, now=T0), other))
    return found


async def send(
    store: Store, session: ChatSession, sender: Participant, count: int, *, tag: str = ""
) -> list[Message]:
    """`count` messages from `sender`, one after the other (so in seq order)."""
    sent = []
    for i in range(count):
        message, _ = await append_one(
            store, session.id, sender, f"text {i}", f"{session.id}-{tag}{i}", T0
        )
        sent.append(message)
    return sent


def assert_session_order(rows: Sequence[OutboxRow]) -> None:
    """Within every session, rows reached the sink in id (and so seq) order."""
    last: dict[object, OutboxRow] = {}
    for row in rows:
        before = last.get(row.session_id)
        if before is not None:
            assert before.id < row.id, (before, row)
            assert before.seq <= row.seq, (before, row)
        last[row.session_id] = row


@pytest.fixture
async def pg_url(postgres_url: str) -> str:
    """The run's PostgreSQL database, migrated and empty of chat data."""
    import psycopg

    async with open_store(postgres_url) as store:
        await store.migrate()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(
            "TRUNCATE chat_message_outbox, chat_messages, chat_sessions RESTART IDENTITY CASCADE"
        )
    return postgres_url
