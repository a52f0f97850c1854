"""`RabbitBridge`: the trio side of the RabbitMQ bridge (docs/architecture.md, Two instances).

Four jobs, one object:

* **Outbox sink.** `publish` turns rows into AMQP messages (routing key from the destination,
  `chatd.bridge.keys`), hands them to the bridge thread in one hop and returns once RabbitMQ
  confirmed every one; a nack fails the call (the publisher charges a retry), while "not
  connected", "connection lost", "blocked by a resource alarm" and "no confirm within
  `confirm_timeout_seconds`" raise `SinkUnavailable`, so the rows go back to pending without
  being charged: they must not die because RabbitMQ restarted or ran short of memory.
* **Bindings follow local subscribers.** The broker runtime reports a destination's first and
  last local subscriber (`destination_active`); we bind its key at once, and unbind it once it
  has had no local subscriber for `unbind_after_seconds` (clients reconnecting after a fault
  find their keys still bound, instead of all binding again at once). `ensure_bound`, awaited
  by the SUBSCRIBE hook, returns once the binding is active, so the RECEIPT (written after the
  hook) promises that nothing published later is missed.
* **Consumer.** Messages from this instance's queue are deduplicated by message id (the outbox
  row id) and delivered through the same `LocalDelivery` path a single instance uses, which also
  keeps the per-session seq mark that history replay relies on.
* **Ephemeral relay.** Typing notices and `/app` answers are never stored: the instance that
  made one delivers it locally at once and `relay_ephemeral` sends a copy, unconfirmed and not
  persistent, to the other instances (dropped while disconnected: it is ephemeral).

Plain attributes for metrics (read at scrape time): `connected`, `published`, `consumed`,
`duplicates`, `confirm_seconds_sum` / `confirm_count`, `bindings`.
"""

from __future__ import annotations

import itertools
import logging
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Final

import trio

from chatd.bridge.amqp import AmqpLink, Command, Incoming, Outgoing
from chatd.bridge.keys import (
    DEFAULT_DEDUPE_SIZE,
    Dedupe,
    binding_destination,
    binding_key,
    routing_key,
)
from chatd.config import RabbitMQConfig, redact_url
from chatd.domain.destinations import is_session_topic, subscription_name
from chatd.domain.errors import Unavailable
from chatd.domain.models import OutboxRow
from chatd.observability.tracing import Span, Tracer
from chatd.outbox.sink import SinkUnavailable
from chatd.realtime.delivery import LocalDelivery, event_headers

log = logging.getLogger("chatd.bridge")

#: Seconds `run` waits for the first connection before reporting started anyway.
STARTUP_WAIT: Final = 5.0
#: Seconds a SUBSCRIBE waits for its binding; then a topic SUBSCRIBE is refused (the client
#: retries) and a user queue's goes ahead (the bind still completes).
BIND_TIMEOUT: Final = 10.0
#: Seconds shutdown waits for the thread to close the connection.
STOP_TIMEOUT: Final = 5.0


class PublishRefused(Exception):
    """RabbitMQ answered a publish with a nack: the rows are retried (and charged)."""


@dataclass(slots=True)
class _Batch:
    done: trio.Event = field(default_factory=trio.Event)
    error: str | None = None
    unavailable: bool = False


class RabbitBridge:
    """Relays outbox rows through RabbitMQ to every instance with local subscribers."""

    def __init__(
        self,
        config: RabbitMQConfig,
        delivery: LocalDelivery,
        *,
        instance_id: str | None = None,
        confirm_timeout: float | None = None,
        dedupe_size: int = DEFAULT_DEDUPE_SIZE,
        tracer: Tracer | None = None,
    ) -> None:
        """`confirm_timeout` (default `config.confirm_timeout_seconds`) must end before the
        outbox publisher's own budget per round, or a late confirm is charged as a failure."""
        self.config = config
        self.confirm_timeout = (
            config.confirm_timeout_seconds if confirm_timeout is None else confirm_timeout
        )
        self.delivery = delivery
        self.instance_id = instance_id or uuid.uuid4().hex
        self.queue = f"chatd.instance.{self.instance_id}"
        self.dedupe = Dedupe(dedupe_size)
        self.connected = False
        self.blocked = False  # RabbitMQ blocked our publishes (memory or disk alarm)
        self.published = 0
        self.consumed = 0
        self.confirm_seconds_sum = 0.0
        self.confirm_count = 0
        #: Called with each batch's publish-to-confirm seconds (metrics set it).
        self.observe_confirm: Callable[[float], None] | None = None
        #: Set when tracing is on: a traced row's message gets a producer span (publish to
        #: confirm) whose traceparent travels in its AMQP headers; a consumed one a consumer
        #: span, parent of its local delivery.
        self.tracer = tracer
        self._link: AmqpLink | None = None
        # Bindings are kept per `binding_destination` (a user's queues share one): the sets
        # and dicts below hold those, and `_user_queues` the user queues each one carries.
        self._active: set[str] = set()  # destination keys with local subscribers (or arriving)
        self._user_queues: dict[str, set[str]] = {}  # ...those of a user with local subscribers
        self._subscribed: set[str] = set()  # ...with local subscribers, as the broker says
        self._pending: dict[str, int] = {}  # ...with SUBSCRIBE hooks between ensure and release
        self._bound: set[str] = set()  # routing keys RabbitMQ confirmed bound
        self._binding: set[str] = set()  # routing keys with a bind on its way (none answered)
        self._idle: dict[str, float] = {}  # destination -> since when no one needs it (trio)
        self._bind_waiters: dict[str, trio.Event] = {}
        self._batches: dict[int, _Batch] = {}
        self._ids = itertools.count(1)
        #: Numbers the (un)binds submitted to the link, and per key the number of its last
        #: unbind still awaiting a newer bind's answer (see `on_bound`).
        self._seq = itertools.count(1)
        self._unbound_at: dict[str, int] = {}
        self._connected_event = trio.Event()
        self._stopping = trio.Event()
        #: Consumed batches not yet taken, each with its ack command. Bounded by RabbitMQ:
        #: nothing past `prefetch` unacknowledged messages is delivered until these are taken.
        self._inbox: deque[tuple[list[Incoming], Command]] = deque()
        self._inbox_ready = trio.Event()

    # -- metrics -----------------------------------------------------------------------------

    @property
    def duplicates(self) -> int:
        return self.dedupe.duplicates

    @property
    def bindings(self) -> int:
        """Routing keys this instance currently has bound."""
        return len(self._bound)

    # -- the part ----------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask `run` to close the connection and return."""
        self._stopping.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the bridge thread and the consumer; report started once connected, or after
        `STARTUP_WAIT` without (the instance still starts, not ready, and keeps retrying;
        `connected` says which)."""
        c = self.config
        link = AmqpLink(
            c.url,
            exchange=c.exchange,
            queue=self.queue,
            prefetch=c.prefetch,
            heartbeat=c.heartbeat_seconds,
            queue_expires_seconds=c.queue_expires_seconds,
            reconnect_initial=c.reconnect_initial_seconds,
            reconnect_max=c.reconnect_max_seconds,
            bring_up_stall=c.bring_up_stall_seconds,
            side=self,
            trio_token=trio.lowlevel.current_trio_token(),
        )
        self._link = link
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._consume)
                nursery.start_soon(self._unbind_idle)
                link.start()
                with trio.move_on_after(STARTUP_WAIT):
                    await self._connected_event.wait()
                if not self.connected:
                    log.warning(
                        "rabbitmq %s not reachable yet; starting, not ready", redact_url(c.url)
                    )
                task_status.started()
                await self._stopping.wait()
                nursery.cancel_scope.cancel()
        finally:
            link.stop()
            if link.thread.is_alive():
                with trio.CancelScope(shield=True), trio.move_on_after(STOP_TIMEOUT):
                    await trio.to_thread.run_sync(link.thread.join, STOP_TIMEOUT)
            self.connected = False

    async def check(self) -> None:
        """Readiness check "bridge": raises Unavailable while RabbitMQ is not connected."""
        if not self.connected:
            raise Unavailable("not connected to RabbitMQ")

    # -- the outbox sink ---------------------------------------------------------------------

    async def publish(self, rows: Sequence[OutboxRow]) -> None:
        """Publish `rows` in order and return once RabbitMQ confirmed all of them.

        Raises SinkUnavailable when not connected or the connection drops meanwhile (nothing
        is charged), PublishRefused on a nack.
        """
        if not self.connected or self._link is None:
            raise SinkUnavailable("not connected to RabbitMQ")
        if self.blocked:
            raise SinkUnavailable("RabbitMQ blocks publishing (resource alarm)")
        messages = [
            Outgoing(
                routing_key(row.destination),
                str(row.id),
                row.destination,
                row.event,
                str(row.session_id),
                row.seq,
                row.payload.encode() if row.payload else b"{}",
                row.trace_context,
            )
            for row in rows
        ]
        if self.tracer is None:
            await self._publish(messages)
            return
        messages, spans = self._producer_spans(self.tracer, messages)
        try:
            await self._publish(messages)
        except BaseException as exc:
            for span in spans:
                span.fail(exc)
            raise
        finally:
            for span in spans:
                span.end()

    def _producer_spans(
        self, tracer: Tracer, messages: list[Outgoing]
    ) -> tuple[list[Outgoing], list[Span]]:
        """A ``publish`` span per traced message, its traceparent in place of the row's."""
        spans: list[Span] = []
        traced = []
        for m in messages:
            if m.trace_context is not None and tracer.records(m.trace_context):
                span = tracer.start(
                    f"publish {self.config.exchange}",
                    m.trace_context,
                    kind="producer",
                    attributes={
                        "messaging.system": "rabbitmq",
                        "messaging.operation.type": "send",
                        "messaging.destination.name": self.config.exchange,
                        "messaging.message.id": m.message_id,
                        "chatd.destination": subscription_name(m.destination),
                    },
                )
                spans.append(span)
                m = replace(m, trace_context=span.context)
            traced.append(m)
        return traced, spans

    async def _publish(self, messages: list[Outgoing]) -> None:
        """`publish` of messages made from rows (see there for what it raises)."""
        assert self._link is not None
        batch_id = next(self._ids)
        batch = self._batches[batch_id] = _Batch()
        started = trio.current_time()
        try:
            self._link.submit(("publish", batch_id, messages))
            with trio.move_on_after(self.confirm_timeout):
                await batch.done.wait()
        finally:
            self._batches.pop(batch_id, None)
        if not batch.done.is_set():
            raise SinkUnavailable(f"no confirm from RabbitMQ within {self.confirm_timeout:g} s")
        if batch.error is not None:
            if batch.unavailable:
                raise SinkUnavailable(batch.error)
            raise PublishRefused(batch.error)
        waited = trio.current_time() - started
        self.confirm_seconds_sum += waited
        self.confirm_count += 1
        if self.observe_confirm is not None:
            self.observe_confirm(waited)
        self.published += len(messages)

    def relay_ephemeral(self, destination: str, event: str, body: bytes) -> None:
        """Send what was just published locally to the other instances' subscribers of
        `destination`; best effort, never blocks."""
        if not self.connected or self._link is None:
            return
        n = next(self._ids)
        message = Outgoing(
            routing_key(destination), f"e-{self.instance_id}-{n}", destination, event, "", 0, body
        )
        self._link.submit(("ephemeral", self.instance_id, message))

    # -- bindings ----------------------------------------------------------------------------

    def destination_active(self, destination: str, active: bool) -> None:
        """`BrokerRuntime.on_destination_active`: bind on the first local subscriber of
        `destination` (of any queue of a user: `binding_destination`), unbind on the last.
        Never blocks."""
        carrier = binding_destination(destination)
        if carrier != destination:
            queues = self._user_queues.setdefault(carrier, set())
            had = bool(queues)
            if active:
                queues.add(destination)
            else:
                queues.discard(destination)
            if not queues:
                del self._user_queues[carrier]
            if had == bool(queues):
                return  # the user's binding is still wanted (or still not)
            destination = carrier
        if active:
            self._idle.pop(destination, None)
            self._subscribed.add(destination)
            if destination not in self._active:
                self._active.add(destination)
                self._submit_bind(destination)
            return
        self._subscribed.discard(destination)
        if self._pending.get(destination):
            return  # a SUBSCRIBE is on its way (ensure_bound): it keeps the binding
        self._retire(destination)

    def _retire(self, destination: str) -> None:
        """No one here needs `destination` now: unbind it once that has lasted
        `unbind_after_seconds`.

        Why not at once: after a fault, thousands of clients reconnect together. Unbinding
        each key as its session went, and binding it again as the client came back, queued
        two RabbitMQ round trips per client on one channel; the binds fell behind the SUBSCRIBE
        hooks' wait, the SUBSCRIBEs were refused, the clients reconnected, and the soak never
        recovered (3 000 clients, one instance behind a slow link)."""
        if self.config.unbind_after_seconds <= 0:
            self._unbind(destination)
        else:
            self._idle.setdefault(destination, trio.current_time())

    async def _unbind_idle(self) -> None:
        """Unbind the destinations `_retire` put aside once their time has come."""
        after = self.config.unbind_after_seconds
        while True:
            await trio.sleep(max(after / 4, 0.05))
            cutoff = trio.current_time() - after
            for destination, since in list(self._idle.items()):
                if since > cutoff:
                    continue
                del self._idle[destination]
                if destination not in self._subscribed and not self._pending.get(destination):
                    self._unbind(destination)

    def _unbind(self, destination: str) -> None:
        self._active.discard(destination)
        key = binding_key(destination)
        self._bound.discard(key)
        self._binding.discard(key)
        seq = next(self._seq)
        self._unbound_at[key] = seq
        if self._link is not None:
            self._link.submit(("unbind", key, seq))
        if is_session_topic(destination):
            # Nothing reaches us for it any more: the seq mark would go stale.
            self.delivery.forget(destination)

    async def ensure_bound(self, destination: str) -> bool:
        """Wait until `destination`'s routing key is bound to this instance's queue; True if
        it is, False when RabbitMQ is not connected or the bind took more than BIND_TIMEOUT
        (the bind is still submitted and completes later). Until it is bound, what other
        instances publish to `destination` does not reach us: a caller that promises a
        gap-free stream (a session topic) must not go ahead on False."""
        destination = binding_destination(destination)
        key = binding_key(destination)
        self._pending[destination] = self._pending.get(destination, 0) + 1
        self._idle.pop(destination, None)
        if destination in self._active and key in self._bound:
            return True
        self._active.add(destination)
        if not self.connected:
            self._submit_bind(destination)
            return False
        waiter = self._bind_waiters.setdefault(key, trio.Event())
        self._submit_bind(destination)
        try:
            with trio.move_on_after(BIND_TIMEOUT):
                await waiter.wait()
        except BaseException:  # the session went away meanwhile: no release will come
            self.release(destination, subscribed=False)
            raise
        bound = key in self._bound
        if bound and is_session_topic(destination):
            # Rows consumed while this bind was on its way came through an older binding
            # RabbitMQ had not removed yet, and may have moved the seq mark past a gap: what
            # was published between that binding's removal and this one is only in the store
            # (found by the soak after a kill -9). Forgotten, the mark is seeded from there.
            self.delivery.forget(destination)
        return bound

    def release(self, destination: str, *, subscribed: bool) -> None:
        """After `ensure_bound`: the SUBSCRIBE was allowed, or refused (`subscribed` False),
        in which case the binding goes unless a subscriber or another SUBSCRIBE needs it."""
        destination = binding_destination(destination)
        left = self._pending.get(destination, 1) - 1
        if left > 0:
            self._pending[destination] = left
            return
        self._pending.pop(destination, None)
        if not subscribed and destination not in self._subscribed:
            self._retire(destination)

    def _submit_bind(self, destination: str) -> None:
        """Ask for `destination`'s binding, unless a bind of its key is on its way (since its
        last unbind): that one's answer releases every waiter. Each SUBSCRIBE retried after
        a bind timeout queued one more round trip behind the slow ones on the channel, and
        the refusals fed themselves (the soak, with no fault: ~120 a minute per instance)."""
        key = binding_key(destination)
        if key in self._binding:
            return
        self._binding.add(key)
        seq = next(self._seq)
        if self._link is not None:
            self._link.submit(("bind", key, seq))

    # -- called from the bridge thread (in trio) -----------------------------------------------

    def on_state(self, connected: bool, reason: str) -> None:
        self.connected = connected
        if connected:
            self._connected_event.set()
            return
        log.log(
            logging.INFO if self._stopping.is_set() else logging.WARNING,
            "rabbitmq bridge disconnected: %s",
            reason,
        )
        self._bound.clear()
        self._binding.clear()  # the reconnect re-binds what is wanted, and says so
        for waiter in self._bind_waiters.values():
            waiter.set()  # the reconnect re-binds; do not hold SUBSCRIBEs meanwhile
        self._bind_waiters.clear()

    def on_confirm(self, batch_id: int, error: str | None, unavailable: bool) -> None:
        batch = self._batches.get(batch_id)
        if batch is not None:
            batch.error, batch.unavailable = error, unavailable
            batch.done.set()

    def on_blocked(self, blocked: bool) -> None:
        if blocked != self.blocked:
            log.log(
                logging.WARNING if blocked else logging.INFO,
                "rabbitmq %s publishing",
                "blocks" if blocked else "unblocked",
            )
        self.blocked = blocked

    def on_bound(self, key: str, seq: int) -> None:
        """RabbitMQ answered a bind that reflects the (un)binds submitted up to `seq`.

        An answer older than the key's last unbind is stale: that unbind is applied after
        it. Taken as current, it released a new SUBSCRIBE's wait while the unbind queued
        behind the old bind was still to come, and the key stayed unbound, the subscriber
        missing what was published, until the new bind landed (the soak: 53 clients with
        gaps behind their RECEIPT)."""
        if seq < self._unbound_at.get(key, 0):
            return
        self._unbound_at.pop(key, None)
        self._binding.discard(key)
        self._bound.add(key)
        waiter = self._bind_waiters.pop(key, None)
        if waiter is not None:
            waiter.set()

    def on_messages(self, batch: list[Incoming], ack: Command) -> None:
        self._inbox.append((batch, ack))
        self._inbox_ready.set()

    def _deliver_traced(self, tracer: Tracer, m: Incoming) -> None:
        """Deliver a consumed message inside a ``receive`` span continuing its trace."""
        span = tracer.start(
            f"receive {self.config.exchange}",
            m.trace_context,
            kind="consumer",
            attributes={
                "messaging.system": "rabbitmq",
                "messaging.operation.type": "receive",
                "messaging.destination.name": self.queue,
                "messaging.message.id": m.message_id,
            },
        )
        try:
            self.delivery.deliver(
                m.destination, m.event, uuid.UUID(m.session_id), m.seq, m.body, span.context
            )
        except BaseException as exc:
            span.fail(exc)
            raise
        finally:
            span.end()

    async def _consume(self) -> None:
        """Take every consumed batch waiting, then acknowledge (one ack per channel: acks
        cover every delivery up to their tag) and let the loop turn.

        Why all of them in one turn: the thread hands over what each socket read brought, a
        few messages at a time, and a batch a turn capped consumption at the loop's pace. In
        the soak, with 1 500 sessions on the loop, a turn took a tenth of a second or more:
        both instances consumed a few dozen messages a second while ~100 a second arrived,
        and their queues grew to 40 000 (deliveries minutes late). What waits here is
        bounded by ``prefetch``, so the turn is too."""
        while True:
            while not self._inbox:
                self._inbox_ready = trio.Event()
                await self._inbox_ready.wait()
            acks: list[Command] = []
            while self._inbox:
                batch, ack = self._inbox.popleft()
                self._take(batch)
                if acks and acks[-1][1] is ack[1]:
                    acks[-1] = ack  # a later tag on the same channel covers the one before
                else:
                    acks.append(ack)
            if self._link is not None:
                for ack in acks:
                    self._link.submit(ack)
            await trio.lowlevel.checkpoint()

    def _wanted(self, destination: str) -> bool:
        """Whether `destination` has local subscribers (or, a topic, a SUBSCRIBE arriving);
        a user's binding also brings that user's queues that have none here."""
        carrier = binding_destination(destination)
        if carrier == destination:
            return destination in self._active
        return destination in self._user_queues.get(carrier, ())

    def _take(self, batch: list[Incoming]) -> None:
        """Deliver a consumed batch to the local subscribers."""
        for m in batch:
            self.consumed += 1
            if m.origin == self.instance_id:
                continue  # ours: delivered locally when it was made
            # Only a message delivered here is remembered: one that found no local
            # subscriber must still be taken when it comes again (a republish after a
            # lease expired) and someone has subscribed meanwhile.
            if not self._wanted(m.destination) or self.dedupe.seen(m.message_id):
                continue
            try:
                if m.origin is not None:
                    self.delivery.runtime.publish(m.destination, m.body, event_headers(m.event))
                    continue
                if (
                    self.tracer is not None
                    and m.trace_context is not None
                    and self.tracer.records(m.trace_context)
                ):
                    self._deliver_traced(self.tracer, m)
                    continue
                self.delivery.deliver(
                    m.destination,
                    m.event,
                    uuid.UUID(m.session_id),
                    m.seq,
                    m.body,
                    m.trace_context,
                )
            except Exception:
                log.exception("delivering message %s to %s failed", m.message_id, m.destination)
