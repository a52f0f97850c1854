"""`LocalDelivery`: the sink that hands outbox rows to this process's STOMP sessions (from the
send committer right after its commit, from the outbox publisher, or from the RabbitMQ
bridge's consumer).

Besides publishing, it remembers per session the highest message seq it published to the
session topic. Gap replay (`chatd.realtime.replay`) needs that mark: every message at or below
it has reached the live subscribers, everything above it will. For the same reason a message
row at or below the mark is not published to the topic again — a publisher retrying a batch
that partly went out, or rows still pending when the mark was seeded from the database, would
otherwise show a subscriber the same seq twice. User queues are not deduplicated: their rows
carry no ordering promise and clients match them by message id.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from typing import Final

from chatd.domain.destinations import is_session_topic, subscription_name, topic_session_id
from chatd.domain.models import EVENT_MESSAGE, OutboxRow
from chatd.observability.tracing import Tracer
from stomp.trio import BrokerRuntime

log = logging.getLogger(__name__)

JSON: Final = "application/json"
#: Session marks kept; the least recently published are forgotten first (and re-seeded from
#: the database when a replay needs them again).
DEFAULT_MAX_TRACKED_SESSIONS: Final = 100_000


def event_headers(event: str, *extra: tuple[str, str]) -> tuple[tuple[str, str], ...]:
    """The headers every MESSAGE chatd sends carries: `event` and the JSON content type."""
    return (("event", event), ("content-type", JSON), *extra)


class LocalDelivery:
    """Publishes outbox rows to this process's broker runtime; tracks per-session seq marks."""

    def __init__(
        self,
        runtime: BrokerRuntime,
        *,
        max_tracked_sessions: int = DEFAULT_MAX_TRACKED_SESSIONS,
        tracer: Tracer | None = None,
    ) -> None:
        self.runtime = runtime
        self.max_tracked_sessions = max_tracked_sessions
        self._last: dict[uuid.UUID, int] = {}
        #: When tracing is on: a row with a trace context gets a ``deliver`` span.
        self.tracer = tracer

    async def publish(self, rows: Sequence[OutboxRow]) -> None:
        """Deliver `rows`, in order, to the local subscribers of their destinations.

        Never blocks. Raises what the broker raises when it cannot take a row (a full /queue
        backlog); rows before it were delivered and the publisher's retry will see them again,
        which the seq mark makes harmless on the topic. An empty payload or an unknown event
        is published as is: the row is valid to the store, and the client decides.
        """
        for row in rows:
            self.publish_row(row)

    def publish_row(self, row: OutboxRow) -> None:
        """`publish` for one row, synchronously (no checkpoint: the seq mark and the delivery
        change together)."""
        body = row.payload.encode() if row.payload else b"{}"
        self.deliver(row.destination, row.event, row.session_id, row.seq, body, row.trace_context)

    def deliver(
        self,
        destination: str,
        event: str,
        session_id: uuid.UUID,
        seq: int,
        body: bytes,
        trace_context: str | None = None,
    ) -> None:
        """Publish one row's fields to the local subscribers of `destination` (what the
        RabbitMQ bridge calls for each consumed message); topic rows at or below the
        session's seq mark are skipped. With tracing on, a row with a `trace_context` is
        delivered inside a ``deliver`` span, its child."""
        if (
            trace_context is not None
            and self.tracer is not None
            and self.tracer.records(trace_context)
        ):
            self._deliver_traced(
                self.tracer, destination, event, session_id, seq, body, trace_context
            )
            return
        topic = event == EVENT_MESSAGE and is_session_topic(destination)
        if topic:
            last = self._last.get(session_id)
            if last is not None and seq <= last:
                log.debug("skipping seq %d of %s: already delivered", seq, session_id)
                return
        self.runtime.publish(
            destination, body, event_headers(event or "unknown", ("x-seq", str(seq)))
        )
        if topic:
            self._mark(session_id, seq)

    def _deliver_traced(
        self,
        tracer: Tracer,
        destination: str,
        event: str,
        session_id: uuid.UUID,
        seq: int,
        body: bytes,
        parent: str,
    ) -> None:
        # Apart from `deliver` so that, off, the hot path pays one test and no extra call.
        name = subscription_name(destination)
        span = tracer.start(
            f"deliver {name.rpartition('.')[0] or name}",
            parent,
            kind="producer",
            attributes={
                "messaging.system": "stomp",
                "messaging.operation.type": "send",
                "messaging.destination.name": name,
                "chatd.event": event,
                "chatd.session_id": str(session_id),
                "chatd.seq": seq,
            },
        )
        try:
            self.deliver(destination, event, session_id, seq, body)
        except BaseException as exc:
            span.fail(exc)
            raise
        finally:
            span.end()

    def forget(self, destination: str) -> None:
        """Drop the seq mark of a session topic this process stops receiving (the RabbitMQ
        bridge unbound it): a later subscriber re-seeds it from the store instead of trusting
        a mark that no longer follows the topic."""
        try:
            session_id = topic_session_id(destination)
        except ValueError:
            return
        self._last.pop(session_id, None)

    def last_seq(self, session_id: uuid.UUID) -> int | None:
        """The highest message seq published to the session topic, None when unknown."""
        return self._last.get(session_id)

    def seed(self, session_id: uuid.UUID, seq: int) -> int:
        """Set the mark of a session not tracked yet (from its stored last seq); return the
        mark in force. Rows at or below it will not be published to the topic."""
        last = self._last.get(session_id)
        if last is not None:
            return last
        self._mark(session_id, seq)
        return seq

    def _mark(self, session_id: uuid.UUID, seq: int) -> None:
        marks = self._last
        marks.pop(session_id, None)  # re-insert: dict order is least recently marked first
        marks[session_id] = seq
        if len(marks) > self.max_tracked_sessions:
            del marks[next(iter(marks))]
