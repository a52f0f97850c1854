"""The outbox purger on every backend: sent rows go after the retention period, in batches;
pending and dead rows stay; a store outage skips a round instead of ending the part."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import trio

from chatd.domain.models import Participant
from chatd.outbox import OutboxPurger
from chatd.storage import Store, open_store
from chatd.storage.base import append_one

from ..conftest import SwitchableProxy, _empty_postgres

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
ANN = Participant("p-ann", "ann@example.com", "Ann")
BOB = Participant("p-bob", "bob@example.com", "Bob")


async def sent_rows(store: Store, count: int, *, sent_at: datetime) -> None:
    session = await store.get_or_create_session("support", ANN, BOB, now=T0)
    for i in range(count):
        await append_one(store, session.id, ANN, f"m{i}", f"c{i}-{sent_at}", T0)
    rows = await store.claim_outbox(limit=10_000, lease_seconds=30, now=sent_at)
    await store.mark_outbox_sent([r.id for r in rows], now=sent_at)


async def test_purges_sent_rows_older_than_the_retention_in_batches(store: Store) -> None:
    await sent_rows(store, 5, sent_at=T0)  # 15 rows, 30 h before "now"
    await sent_rows(store, 2, sent_at=T0 + timedelta(hours=20))  # 6 rows, 10 h before
    session = await store.get_or_create_session("support", ANN, BOB, now=T0)
    await append_one(store, session.id, BOB, "pending", "pending-1", T0)  # 3 pending rows
    now = T0 + timedelta(hours=30)
    purger = OutboxPurger(store, timedelta(hours=24), lambda: now, batch=4)

    assert await purger.purge_once() == 15
    assert purger.purged == 15
    assert await purger.purge_once() == 0
    assert await store.outbox_stats() == (3, 0)
    later = now + timedelta(hours=20)
    assert await OutboxPurger(store, timedelta(hours=24), lambda: later).purge_once() == 6
    assert await store.outbox_stats() == (3, 0)


def test_interval_follows_the_retention() -> None:
    store: Any = None  # never touched by the constructor
    assert OutboxPurger(store, timedelta(hours=24), lambda: T0).interval == 600
    assert OutboxPurger(store, timedelta(seconds=60), lambda: T0).interval == 15
    with pytest.raises(ValueError, match="retention"):
        OutboxPurger(store, timedelta(0), lambda: T0)


async def test_a_database_outage_skips_rounds_and_purging_resumes(
    proxied_pg: tuple[str, SwitchableProxy], caplog: pytest.LogCaptureFixture
) -> None:
    url, proxy = proxied_pg
    async with open_store(url, pool_size=2, connect_timeout=1, pool_timeout=1) as store:
        await store.migrate()
        await trio.to_thread.run_sync(_empty_postgres, url)
        await sent_rows(store, 1, sent_at=T0)
        purger = OutboxPurger(
            store, timedelta(hours=1), lambda: T0 + timedelta(hours=2), interval=0.05
        )
        async with trio.open_nursery() as nursery:
            proxy.switch(False)
            await nursery.start(purger.run)
            with trio.fail_after(10):
                while "outbox purge skipped" not in caplog.text:  # noqa: ASYNC110 - log only
                    await trio.sleep(0.02)
            assert purger.purged == 0
            proxy.switch(True)  # the part kept going: the next round purges
            with trio.fail_after(10):
                while purger.purged < 3:  # noqa: ASYNC110 - the part exposes a counter only
                    await trio.sleep(0.02)
            nursery.cancel_scope.cancel()
        assert await store.outbox_stats() == (0, 0)
