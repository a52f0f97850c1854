"""The bridge thread: the only code that talks to pika.

Why a thread and a `SelectConnection`: pika is not trio-aware, and `BlockingConnection` allows
one pending publisher confirm at a time (~2k msg/s). A `SelectConnection` driven by its own
ioloop in one dedicated thread pipelines publishes and matches confirms by delivery tag.

Everything in this module runs in that thread, except `submit` and `stop`, which trio calls:
they queue a command and wake the ioloop (`add_callback_threadsafe`). Results go back to trio
through the `TrioSide` callbacks: state changes, confirms, bindings and deliveries are queued
to trio without waiting (`run_sync_soon`, in order); deliveries are batched (one hop per
socket read, not per message) and acknowledged when trio says it took them (an ``ack``
command), which is the back-pressure: what trio has not taken bounds what RabbitMQ delivers
(prefetch), and the rest waits in RabbitMQ.

Topology, re-declared on every connection: a durable topic exchange and one durable queue per
instance that expires (`x-expires`) once no consumer has used it for `queue_expires_seconds`.
Durable queue + persistent messages + publisher confirms is what lets a RabbitMQ restart lose
nothing: a confirmed message is on disk in every queue it was routed to, and the queue and its
bindings come back with the node. (An exclusive auto-delete queue would vanish with the
connection, and with it whatever it held.) A clean stop deletes the queue; a killed
instance's queue goes away by expiry.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import pika
import pika.exceptions
import trio
from pika.adapters.select_connection import IOLoop

from chatd.observability.tracing import TRACEPARENT

log = logging.getLogger("chatd.bridge")
# pika logs every failed connection attempt at ERROR with a stack of wrappers; the bridge logs
# one line per attempt itself, so only pika's own bugs (CRITICAL) get through.
logging.getLogger("pika").setLevel(logging.CRITICAL)

PERSISTENT = 2
#: Channels the (un)binds are spread over, each key always on the same one (its binds and
#: unbinds stay in order). RabbitMQ answers one synchronous method per channel at a time:
#: binding 2 000 keys on a durable queue took 1.7 ms a key on one channel, 0.6 ms on 16.
BIND_CHANNELS = 8


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One outbox row as an AMQP message; `message_id` is the row id (unique per destination)."""

    routing_key: str
    message_id: str
    destination: str
    event: str
    session_id: str
    seq: int
    body: bytes
    #: The traceparent a consumer's spans continue (AMQP header ``traceparent``), if traced.
    trace_context: str | None = None


@dataclass(frozen=True, slots=True)
class Incoming:
    """A consumed message, already out of pika's types; `origin` is set on ephemeral ones
    (typing, `/app` answers): the instance that already delivered it locally."""

    message_id: str
    destination: str
    event: str
    session_id: str
    seq: int
    body: bytes
    origin: str | None = None
    trace_context: str | None = None


class TrioSide(Protocol):
    """What the thread tells trio: the sync methods run in trio, in the order told, and the
    thread does not wait for them (`AmqpLink._tell`); they must not block."""

    def on_state(self, connected: bool, reason: str) -> None: ...
    def on_confirm(self, batch_id: int, error: str | None, unavailable: bool) -> None: ...
    def on_bound(self, routing_key: str, seq: int) -> None: ...
    def on_blocked(self, blocked: bool) -> None: ...
    def on_messages(self, batch: list[Incoming], ack: Command) -> None:
        """Consumed messages; `ack` is the command to submit once they were taken."""


Command = tuple[Any, ...]


def _for_each(fn: Callable[[str, int], None], items: list[str], seq: int) -> None:
    for item in items:
        fn(item, seq)


def _guarded(fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    """Run a TrioSide callback in trio; an exception there is a bug of ours, logged, never
    raised into trio's run loop (which would end the whole process)."""
    try:
        fn(*args)
    except Exception:
        log.exception("the rabbitmq bridge's %s callback failed", getattr(fn, "__name__", fn))


class AmqpLink:
    """Owns the connection in the bridge thread: connect, declare, bind, publish, consume,
    reconnect with capped exponential backoff until `stop()`."""

    def __init__(
        self,
        url: str,
        *,
        exchange: str,
        queue: str,
        prefetch: int,
        heartbeat: int,
        queue_expires_seconds: float,
        reconnect_initial: float,
        reconnect_max: float,
        bring_up_stall: float,
        side: TrioSide,
        trio_token: trio.lowlevel.TrioToken,
    ) -> None:
        self.params = pika.URLParameters(url)
        self.params.heartbeat = heartbeat
        self.params.connection_attempts = 1
        self.params.socket_timeout = 5
        self.params.stack_timeout = bring_up_stall  # the handshake; `_watch_bring_up` the rest
        self.params.blocked_connection_timeout = 30
        self.exchange = exchange
        self.queue = queue
        self.prefetch = prefetch
        self.expires_ms = int(queue_expires_seconds * 1000)
        self.reconnect_initial = reconnect_initial
        self.reconnect_max = reconnect_max
        self.bring_up_stall = bring_up_stall
        self.side = side
        self.token = trio_token
        self.ioloop = IOLoop()
        self.thread = threading.Thread(target=self._main, name="chatd-rabbitmq", daemon=True)
        self._commands: deque[Command] = deque()
        #: A wake of the ioloop is on its way and has not started draining: a command queued
        #: now is drained by it (see `_wake`).
        self._wake_pending = False
        self._connection: pika.SelectConnection | None = None
        self._channel: Any = None  # publishes, confirms, the consumer, declares
        self._bind_channels: list[Any] = []  # (un)binds, by `_bind_channel`
        self._ready = False
        self._stopping = False
        self._failures = 0
        self._desired: set[str] = set()  # routing keys trio wants bound
        self._applied: set[str] = set()  # what we last bound (the durable queue keeps it)
        self._drained_seq = 0  # the last (un)bind command read: `_desired` reflects it
        self._tag = 0
        self._tags: dict[int, int] = {}  # delivery tag -> batch id, in tag order
        self._batches: dict[int, list[Any]] = {}  # batch id -> [remaining, nacked]
        self._inbox: list[Incoming] = []
        self._inbox_tag = 0
        self._inbox_channel: Any = None
        #: Where the bring-up is, and when RabbitMQ last answered it (see `_watch_bring_up`).
        self._stage = ""
        self._answered = 0.0

    # -- called from trio ------------------------------------------------------------------

    def start(self) -> None:
        self.thread.start()

    def submit(self, command: Command) -> None:
        """Queue ("publish", batch_id, [Outgoing]), ("ephemeral", origin, Outgoing),
        ("bind", key, seq) or ("unbind", key, seq); `seq` numbers the (un)binds in the order
        trio submits them, and each `on_bound` carries the number of the last one it reflects
        (see `RabbitBridge.on_bound`)."""
        self._commands.append(command)
        if not self._wake_pending:
            self._wake()

    def stop(self) -> None:
        """Close the connection and end the thread (returns at once)."""
        self._commands.append(("stop",))
        self._wake()

    def _wake(self) -> None:
        """One wake of the ioloop for every command queued before it drains.

        Why not one per command: each wake is a write to pika's wake-up pipe and a switch to
        this thread; with 1 500 clients typing and sending, one instance's trio thread spent
        2.6 % of its time in those writes. The ioloop clears `_wake_pending` before it takes
        the first command, so a command queued after it took the last one wakes it again."""
        self._wake_pending = True
        self.ioloop.add_callback_threadsafe(self._drain_commands)

    # -- the thread --------------------------------------------------------------------------

    def _main(self) -> None:
        self.ioloop.call_later(0, self._connect)
        try:
            self.ioloop.start()
        finally:
            self.ioloop.close()
            log.info("rabbitmq bridge thread stopped")

    def _tell(self, fn: Callable[..., Any], *args: Any) -> bool:
        """Have trio run the sync TrioSide callback `fn(*args)` soon, in the order told, without
        waiting for it; False once trio is gone.

        Why not wait (`from_thread.run_sync`): each wait is a round trip through trio's loop,
        and a busy loop answers in milliseconds. After a RabbitMQ restart the bring-up told
        trio of each of its 6 000 restored bindings one wait at a time; the ioloop, stuck in
        that loop for minutes, confirmed no publish meanwhile, and the soak's outbox stayed
        "sink unavailable", its backlog full and every send refused."""
        try:
            self.token.run_sync_soon(_guarded, fn, args)
        except trio.RunFinishedError:
            self._stopping = True
            return False
        return True

    def _connect(self) -> None:
        if self._stopping:
            self.ioloop.stop()
            return
        self._connection = pika.SelectConnection(
            self.params,
            on_open_callback=self._on_open,
            on_open_error_callback=self._on_lost,
            on_close_callback=self._on_lost,
            custom_ioloop=self.ioloop,
        )

    def _progress(self, stage: str) -> None:
        """RabbitMQ answered a step of the bring-up; `stage` is what we wait for next."""
        self._stage = stage
        self._answered = time.monotonic()

    def _watch_bring_up(self, connection: pika.SelectConnection) -> None:
        """Drop `connection` (and so make a new one) when its bring-up stalls.

        Why: pika bounds the handshake (``stack_timeout``, set to the same stall) but not the
        channel's methods, and one connection of the soak stayed silent for seven minutes
        after a RabbitMQ restart, its instance refusing every session SUBSCRIBE meanwhile.
        Progress, not the whole bring-up, is timed: re-binding thousands of keys on a slow
        link takes a while."""
        if connection is not self._connection or self._ready or self._stopping:
            return
        silent = time.monotonic() - self._answered
        if silent < self.bring_up_stall:
            self.ioloop.call_later(
                self.bring_up_stall - silent, lambda: self._watch_bring_up(connection)
            )
            return
        if connection.is_closing:  # nor did it answer our close: drop the socket
            connection._terminate_stream(pika.exceptions.StreamLostError("bring-up stalled"))
            return
        log.warning(
            "rabbitmq bring-up stalled: no answer for %.0f s while %s; connecting again",
            silent,
            self._stage,
        )
        with contextlib.suppress(pika.exceptions.ConnectionWrongStateError):
            connection.close()  # _on_lost connects again
        self._answered = time.monotonic()
        self.ioloop.call_later(self.bring_up_stall, lambda: self._watch_bring_up(connection))

    def _on_open(self, connection: pika.SelectConnection) -> None:
        self._progress("opening a channel")
        self._watch_bring_up(connection)
        # A resource alarm (memory, disk) blocks publishing connections: tell trio, so the
        # outbox waits uncharged instead of piling publishes into a socket nobody reads.
        connection.add_on_connection_blocked_callback(
            lambda _c, _f: self._tell(self.side.on_blocked, True)
        )
        connection.add_on_connection_unblocked_callback(
            lambda _c, _f: self._tell(self.side.on_blocked, False)
        )
        connection.channel(on_open_callback=self._on_channel)

    def _on_channel(self, channel: Any) -> None:
        self._progress("turning on publisher confirms")
        self._channel = channel
        self._tag = 0  # delivery tags count from 1 on every channel
        channel.add_on_close_callback(self._on_channel_closed)
        channel.confirm_delivery(self._on_confirm, callback=lambda _f: self._declare())

    def _declare(self) -> None:
        self._progress("declaring the exchange")
        ch = self._channel

        def declare_queue(_frame: Any) -> None:
            self._progress(f"declaring queue {self.queue}")
            ch.queue_declare(
                queue=self.queue,
                durable=True,
                arguments={"x-expires": self.expires_ms},
                callback=lambda _f: self._open_bind_channels(),
            )

        ch.exchange_declare(
            exchange=self.exchange, exchange_type="topic", durable=True, callback=declare_queue
        )

    def _open_bind_channels(self) -> None:
        self._progress(f"opening {BIND_CHANNELS} channels for bindings")
        connection, opened = self._connection, []

        def on_open(channel: Any) -> None:
            channel.add_on_close_callback(self._on_channel_closed)
            opened.append(channel)
            if len(opened) == BIND_CHANNELS and connection is self._connection:
                self._bind_channels = opened
                self._rebind()

        assert connection is not None
        for _ in range(BIND_CHANNELS):
            connection.channel(on_open_callback=on_open)

    def _bind_channel(self, key: str) -> Any:
        """The channel of `key`'s (un)binds: always the same one, so they stay in order."""
        return self._bind_channels[zlib.crc32(key.encode()) % len(self._bind_channels)]

    def _rebind(self) -> None:
        for key in self._applied - self._desired:
            self._bind_channel(key).queue_unbind(
                queue=self.queue, exchange=self.exchange, routing_key=key
            )
        self._applied &= self._desired
        keys = sorted(self._desired)
        seq = self._drained_seq
        left = len(keys)
        self._progress(f"re-binding {left} routing keys")

        def bound(_frame: Any) -> None:
            nonlocal left
            left -= 1
            self._progress(f"re-binding ({len(keys) - left} of {len(keys)} done)")
            if left == 0:
                self._qos(keys, seq)

        for key in keys:
            self._bind_channel(key).queue_bind(
                queue=self.queue, exchange=self.exchange, routing_key=key, callback=bound
            )
            self._applied.add(key)
        if not keys:
            self._qos(keys, seq)

    def _qos(self, keys: list[str], seq: int) -> None:
        """Once every wanted key is bound again: prefetch, then consume."""
        self._progress("setting the prefetch")
        self._channel.basic_qos(
            prefetch_count=self.prefetch, callback=lambda _f: self._consume(keys, seq)
        )

    def _consume(self, keys: list[str], seq: int) -> None:
        # exclusive: the queue is durable (see the module doc) but still this instance's alone
        self._channel.basic_consume(
            queue=self.queue, on_message_callback=self._on_message, exclusive=True
        )
        self._ready = True
        self._failures = 0
        log.info("rabbitmq bridge connected: queue %s, %d bindings", self.queue, len(keys))
        self._tell(self.side.on_state, True, "connected")
        self._tell(_for_each, self.side.on_bound, keys, seq)  # one hop for thousands of keys
        self._sync_bindings()  # (un)binds trio asked for while we were declaring
        self._drain_commands()

    def _sync_bindings(self) -> None:
        for key in self._applied - self._desired:
            self._bind_channel(key).queue_unbind(
                queue=self.queue, exchange=self.exchange, routing_key=key
            )
        self._applied &= self._desired
        seq = self._drained_seq
        for key in sorted(self._desired - self._applied):
            self._applied.add(key)
            self._bind_channel(key).queue_bind(
                queue=self.queue,
                exchange=self.exchange,
                routing_key=key,
                callback=lambda _f, key=key: self._tell(self.side.on_bound, key, seq),
            )

    def _on_channel_closed(self, channel: Any, reason: Exception) -> None:
        # A channel error (e.g. a declare refused) leaves the connection useless to us.
        conn = self._connection
        if conn is not None and conn.is_open:
            log.warning("rabbitmq channel closed: %s; reconnecting", reason)
            conn.close()

    def _on_lost(self, _connection: Any, reason: Any) -> None:
        was_ready = self._ready
        self._ready = False
        self._channel = None
        self._bind_channels = []
        self._connection = None
        self._tags.clear()
        self._tell(self.side.on_blocked, False)
        batches, self._batches = self._batches, {}
        self._inbox.clear()
        for batch_id in batches:
            self._tell(self.side.on_confirm, batch_id, "connection to RabbitMQ lost", True)
        if was_ready or self._failures == 0:
            self._tell(self.side.on_state, False, str(reason) or type(reason).__name__)
        if self._stopping:
            self.ioloop.stop()
            return
        delay = min(self.reconnect_max, self.reconnect_initial * 2 ** min(self._failures, 30))
        delay *= 0.5 + random.random() / 2
        self._failures += 1
        log.warning(
            "rabbitmq unavailable (%s); reconnecting in %.2f s", str(reason) or repr(reason), delay
        )
        self.ioloop.call_later(delay, self._connect)

    # -- commands ----------------------------------------------------------------------------

    def _drain_commands(self) -> None:
        self._wake_pending = False
        while self._commands:
            command = self._commands.popleft()
            kind = command[0]
            if kind == "stop":
                self._stop()
                return
            if kind == "bind":
                key, seq = command[1], command[2]
                self._drained_seq = seq
                self._desired.add(key)
                if self._ready:
                    self._applied.add(key)
                    self._bind_channel(key).queue_bind(
                        queue=self.queue,
                        exchange=self.exchange,
                        routing_key=key,
                        callback=lambda _f, key=key, seq=seq: self._tell(
                            self.side.on_bound, key, seq
                        ),
                    )
            elif kind == "unbind":
                self._drained_seq = command[2]
                self._desired.discard(command[1])
                if self._ready:
                    self._applied.discard(command[1])
                    self._bind_channel(command[1]).queue_unbind(
                        queue=self.queue, exchange=self.exchange, routing_key=command[1]
                    )
            elif kind == "publish":
                self._publish(command[1], command[2])
            elif kind == "ack":
                self._ack(command[1], command[2])
            elif kind == "ephemeral" and self._ready:
                m = command[2]
                props = pika.BasicProperties(
                    message_id=m.message_id,
                    content_type="application/json",
                    headers={"d": m.destination, "e": m.event, "s": "", "q": 0, "o": command[1]},
                )
                self._channel.basic_publish(self.exchange, m.routing_key, m.body, props)
                self._tag += 1  # confirmed like any publish on this channel; nobody waits

    def _publish(self, batch_id: int, messages: list[Outgoing]) -> None:
        if not self._ready:
            self._tell(self.side.on_confirm, batch_id, "not connected to RabbitMQ", True)
            return
        self._batches[batch_id] = [len(messages), False]
        for m in messages:
            headers = {"d": m.destination, "e": m.event, "s": m.session_id, "q": m.seq}
            if m.trace_context is not None:
                headers[TRACEPARENT] = m.trace_context
            props = pika.BasicProperties(
                message_id=m.message_id,
                delivery_mode=PERSISTENT,
                content_type="application/json",
                headers=headers,
            )
            self._channel.basic_publish(self.exchange, m.routing_key, m.body, props)
            self._tag += 1
            self._tags[self._tag] = batch_id

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        nack = isinstance(method, pika.spec.Basic.Nack)
        tag = method.delivery_tag
        if method.multiple:
            done = [t for t in self._tags if t <= tag]
        else:
            done = [tag] if tag in self._tags else []
        for t in done:
            batch_id = self._tags.pop(t)
            batch = self._batches.get(batch_id)
            if batch is None:
                continue
            batch[0] -= 1
            batch[1] = batch[1] or nack
            if batch[0] == 0:
                del self._batches[batch_id]
                error = "RabbitMQ refused (nack)" if batch[1] else None
                self._tell(self.side.on_confirm, batch_id, error, False)

    def _on_message(self, channel: Any, method: Any, props: Any, body: bytes) -> None:
        headers = props.headers or {}
        try:
            origin, trace = headers.get("o"), headers.get(TRACEPARENT)
            self._inbox.append(
                Incoming(
                    str(props.message_id),
                    _text(headers["d"]),
                    _text(headers["e"]),
                    _text(headers["s"]),
                    int(headers["q"]),
                    body,
                    None if origin is None else _text(origin),
                    None if trace is None else _text(trace),
                )
            )
        except (KeyError, TypeError, ValueError):
            log.warning("dropping a malformed message (routing key %s)", method.routing_key)
        if not self._inbox and self._inbox_tag == 0:
            channel.basic_ack(method.delivery_tag)
            return
        first = self._inbox_tag == 0
        self._inbox_tag = method.delivery_tag
        self._inbox_channel = channel
        if first:
            self.ioloop.call_later(0, self._flush_inbox)  # after the rest of this read

    def _flush_inbox(self) -> None:
        """Hand what this read consumed to trio, without waiting: trio submits the ``ack``
        command once it took the batch, so what RabbitMQ delivers beyond that waits there
        (prefetch) and never here.

        Why not wait (`from_thread.run`, as this did): each read of deliveries then held the
        ioloop for a round trip through trio's busy loop, and the bind answers behind it
        waited too. After an instance restart in the soak, its 1 500 clients' SUBSCRIBEs
        waited for their binds, were refused after BIND_TIMEOUT, and reconnected: 1 000 to
        1 500 refusals a minute for the rest of the run."""
        batch, self._inbox = self._inbox, []
        tag, channel = self._inbox_tag, self._inbox_channel
        self._inbox_tag = 0
        if batch:
            self._tell(self.side.on_messages, batch, ("ack", channel, tag))
        else:  # all of it malformed: nothing for trio
            self._ack(channel, tag)

    def _ack(self, channel: Any, tag: int) -> None:
        """Acknowledge up to `tag` on `channel`, unless that channel is gone (a reconnect:
        RabbitMQ delivers what it held again)."""
        if channel is not None and channel is self._channel and channel.is_open:
            channel.basic_ack(tag, multiple=True)

    def _stop(self) -> None:
        self._stopping = True
        if self._ready:
            # A clean stop deletes our queue now; only a killed instance leaves one to expire.
            self._ready = False
            self._channel.queue_delete(queue=self.queue, callback=lambda _f: self._close())
            return
        self._close()

    def _close(self) -> None:
        conn = self._connection
        if conn is not None and (conn.is_open or conn.is_opening):
            try:
                conn.close()
                return  # _on_lost stops the ioloop
            except pika.exceptions.ConnectionWrongStateError:
                pass
        self.ioloop.stop()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
