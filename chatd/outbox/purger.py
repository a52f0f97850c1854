"""Deletes outbox rows long after they were sent, so the outbox table stays small.

Every message leaves three outbox rows (its topic and both participants' user queues), every
receipt two: without a purge the table grows with the whole chat history, and the publisher's
claim scans it. Sent rows are kept for ``[outbox] retention_hours`` (what went out, and when,
for an operator) and then deleted in batches, each its own short transaction, so a large
backlog never holds one long lock. Pending and dead rows are never touched. Several instances
may purge at once: they delete disjoint or already-gone rows, which is harmless.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

import trio

from chatd.domain.errors import Unavailable
from chatd.storage.base import Store

log = logging.getLogger("chatd.outbox")

PURGE_BATCH = 5_000  # rows per DELETE
MAX_PURGE_INTERVAL = 600.0  # seconds between purges, at most


class OutboxPurger:
    """A supervisor part: every `interval` seconds, delete rows sent more than `retention`
    ago. `clock` gives aware UTC datetimes (the publisher's clock); `purged` counts rows
    deleted, for metrics and logs."""

    def __init__(
        self,
        store: Store,
        retention: timedelta,
        clock: Callable[[], datetime],
        *,
        interval: float | None = None,
        batch: int = PURGE_BATCH,
    ) -> None:
        if retention <= timedelta(0):
            raise ValueError("retention must be positive (no purger means keep forever)")
        self._store = store
        self._retention = retention
        self._clock = clock
        self._batch = batch
        self.interval = (
            min(MAX_PURGE_INTERVAL, retention.total_seconds() / 4) if interval is None else interval
        )
        self.purged = 0

    async def purge_once(self) -> int:
        """Delete every row sent before now minus the retention, batch by batch; return how
        many went. Raises Unavailable when the store is down."""
        cutoff = self._clock() - self._retention
        total = 0
        while True:
            deleted = await self._store.purge_outbox(sent_before=cutoff, limit=self._batch)
            total += deleted
            self.purged += deleted
            if deleted < self._batch:
                return total
            await trio.lowlevel.checkpoint()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Purge now and then every `interval` until cancelled; a store outage is logged and
        waits for the next round."""
        task_status.started()
        while True:
            try:
                deleted = await self.purge_once()
            except Unavailable as exc:
                log.warning("outbox purge skipped: %s", exc)
            else:
                if deleted:
                    log.info(
                        "outbox purge: deleted %d rows sent before the last %s",
                        deleted,
                        self._retention,
                    )
            await trio.sleep(self.interval)
