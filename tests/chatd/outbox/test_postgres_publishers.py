"""The publisher's PostgreSQL-only promises: several processes on one database, and outages.

Each publisher gets its own `Store` (its own pool and LISTEN connection), as two chatd
processes would; they share only the database and the recording "broker".
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack
from datetime import UTC, datetime

import pytest
import trio

from chatd.domain.errors import Unavailable
from chatd.domain.models import OutboxRow
from chatd.outbox import OutboxPublisher, SinkUnavailable
from chatd.services.committer import SendCommitter
from chatd.storage import Store, open_store
from chatd.storage.base import NewMessage
from chatd.supervisor import delivery_backlog
from tests.conftest import PG_ADMIN_URL

from .conftest import (
    ANN,
    RecordingSink,
    assert_session_order,
    config,
    running,
    send,
    sessions,
    wait_until,
)


@pytest.fixture
async def pg_store(pg_url: str) -> AsyncIterator[Store]:
    """A store on the run's PostgreSQL database; short timeouts so an outage shows quickly."""
    async with open_store(pg_url, pool_size=4, pool_timeout=0.5, connect_timeout=1) as store:
        yield store


async def test_two_publishers_on_one_database_publish_each_row_once(pg_url: str) -> None:
    sink = RecordingSink(delay=0.002)  # a call takes a moment, so the two really overlap
    async with AsyncExitStack() as stack:
        stores = [
            await stack.enter_async_context(open_store(pg_url, pool_size=4)) for _ in range(3)
        ]
        writer = stores[0]
        pairs = await sessions(writer, 12)
        publishers = [OutboxPublisher(s, sink, config(batch_size=25)) for s in stores[1:]]
        for publisher in publishers:
            await stack.enter_async_context(running(publisher))
        async with trio.open_nursery() as nursery:  # written while both publish
            for i, (session, other) in enumerate(pairs):
                nursery.start_soon(send, writer, session, other if i % 2 else ANN, 25)
        total = 12 * 25 * 3
        await wait_until(lambda: len(sink.accepted) >= total, within=30)
        await trio.sleep(0.2)  # a duplicate would show up now

        assert len(sink.ids) == total
        assert len(set(sink.ids)) == total  # each row once
        assert sink.overlaps == []  # and never in two calls at the same time
        assert_session_order(sink.accepted)
        assert sum(p.published for p in publishers) == total
        assert all(p.published > 0 for p in publishers)  # both did share the work
        assert await writer.outbox_stats() == (0, 0)


class CutOff:
    """The sink of an instance cut off RabbitMQ: every publish is refused as unavailable."""

    async def publish(self, rows: Sequence[OutboxRow]) -> None:
        raise SinkUnavailable("cut off")


async def test_with_several_instances_the_delivery_backlog_is_the_stores(pg_url: str) -> None:
    """Found by the soak (issue 22): each instance counted its backlog as the rows it wrote
    minus the rows its own publisher sent. Publishers take each other's rows, so an instance
    cut off RabbitMQ (or just slower) kept a backlog that never shrank once the other one had
    delivered everything, and refused every send ("server busy") with an empty outbox."""
    sink = RecordingSink()
    async with AsyncExitStack() as stack:
        store_a, store_b = [
            await stack.enter_async_context(open_store(pg_url, pool_size=4)) for _ in range(2)
        ]
        [(session, _)] = await sessions(store_a, 1)
        committer = SendCommitter(
            store_a, sink=None, max_backlog=100, clock=lambda: datetime.now(UTC)
        )
        publisher_a = OutboxPublisher(store_a, CutOff(), config())
        committer.backlog = delivery_backlog(committer, publisher_a, shared=True)
        nursery = await stack.enter_async_context(trio.open_nursery())
        await nursery.start(committer.run)
        stack.callback(committer.stop)
        await stack.enter_async_context(running(publisher_a))
        await stack.enter_async_context(
            running(OutboxPublisher(store_b, sink, config(batch_size=100)))
        )

        def message(i: int) -> NewMessage:
            return NewMessage(session.id, ANN, f"m{i}", f"backlog-{i}", datetime.now(UTC))

        for i in range(30):  # 90 rows, all delivered by the other instance's publisher
            await committer.append(message(i))
        await wait_until(lambda: len(sink.accepted) == 90, within=15)
        await wait_until(lambda: committer.backlog() == 0, within=5)
        # ...so this instance still accepts: the rows it wrote are no longer waiting
        for i in range(30, 60):
            await committer.append(message(i))
        await wait_until(lambda: len(sink.accepted) == 180, within=15)


def _allow_connections(database: str, allow: bool) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS {str(allow).lower()}')
        if not allow:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (database,),
            )


async def test_a_database_outage_is_logged_and_survived(
    pg_url: str, pg_store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    database = pg_url.rsplit("/", 1)[1]
    [(session, _)] = await sessions(pg_store, 1)
    sink = RecordingSink()
    publisher = OutboxPublisher(
        pg_store, sink, config(poll_interval=0.2, backoff_base=0.05, backoff_cap=0.2)
    )
    with caplog.at_level(logging.WARNING, logger="chatd.outbox"):
        async with running(publisher):
            await send(pg_store, session, ANN, 1)
            await wait_until(lambda: len(sink.accepted) == 3)
            try:
                await trio.to_thread.run_sync(_allow_connections, database, False)
                await wait_until(lambda: "store unavailable" in caplog.text, within=10)
                await trio.sleep(1.0)  # several failed rounds, with backoff
            finally:
                await trio.to_thread.run_sync(_allow_connections, database, True)

            async def send_again() -> None:  # the pool reconnects in its own time
                while True:
                    try:
                        await send(pg_store, session, ANN, 1, tag="after")
                        return
                    except Unavailable:  # until the pool has reconnected
                        await trio.sleep(0.2)

            with trio.fail_after(20):
                await send_again()
            await wait_until(lambda: len(sink.accepted) == 6, within=20)
    assert_session_order(sink.accepted)
    assert publisher.published == 6
    outages = [r for r in caplog.records if "store unavailable" in r.getMessage()]
    assert len(outages) >= 2  # retried, not given up
    assert all(r.levelno == logging.WARNING for r in outages)
