"""Hypothesis state machine: on a /queue, no message is lost or duplicated, whatever the
sequence of subscribes, acks, nacks, transactions, unsubscribes and dropped connections."""

from __future__ import annotations

from collections import Counter

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from stomp import Command
from stomp.broker import Broker, Limits
from stomp.testing import Loopback, LoopbackClient

QUEUE = "/queue/work"
MODES = ["auto", "client", "client-individual"]


class Consumer:
    def __init__(self, client: LoopbackClient, mode: str) -> None:
        self.client = client
        self.mode = mode
        self.pending: list[tuple[str, bytes]] = []  # (ack id, body) in delivery order


class QueueMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.lb = Loopback(Broker(limits=Limits(max_unacked=3, max_queue_backlog=10_000)))
        self.producer = self.lb.client()
        self.consumers: list[Consumer] = []
        self.sent: list[bytes] = []
        self.consumed: Counter[bytes] = Counter()
        self.in_transaction: list[bytes] | None = None
        self.counter = 0

    def collect(self) -> None:
        for consumer in self.consumers:
            for frame in consumer.client.take():
                assert frame.command is Command.MESSAGE, frame
                if consumer.mode == "auto":
                    self.consumed[frame.body] += 1
                else:
                    consumer.pending.append((frame.get("ack") or "", frame.body))
        assert self.producer.take() == []

    @rule()
    def send(self) -> None:
        body = b"m%d" % self.counter
        self.counter += 1
        if self.in_transaction is not None:
            self.producer.send("SEND", {"destination": QUEUE, "transaction": "tx"}, body)
            self.in_transaction.append(body)
        else:
            self.producer.send("SEND", {"destination": QUEUE}, body)
            self.sent.append(body)
        self.collect()

    @precondition(lambda self: self.in_transaction is None)
    @rule()
    def begin(self) -> None:
        self.producer.send("BEGIN", {"transaction": "tx"})
        self.in_transaction = []

    @precondition(lambda self: self.in_transaction is not None)
    @rule(commit=st.booleans())
    def finish(self, commit: bool) -> None:
        assert self.in_transaction is not None
        self.producer.send("COMMIT" if commit else "ABORT", {"transaction": "tx"})
        if commit:
            self.sent += self.in_transaction
        self.in_transaction = None
        self.collect()

    @precondition(lambda self: len(self.consumers) < 4)
    @rule(mode=st.sampled_from(MODES))
    def subscribe(self, mode: str) -> None:
        consumer = Consumer(self.lb.client(), mode)
        self.consumers.append(consumer)
        consumer.client.send("SUBSCRIBE", {"id": "1", "destination": QUEUE, "ack": mode})
        self.collect()

    @precondition(lambda self: any(c.pending for c in self.consumers))
    @rule(data=st.data(), nack=st.booleans())
    def settle(self, data: st.DataObject, nack: bool) -> None:
        consumer = data.draw(st.sampled_from([c for c in self.consumers if c.pending]))
        index = data.draw(st.integers(0, len(consumer.pending) - 1))
        ack_id, _ = consumer.pending[index]
        consumer.client.send("NACK" if nack else "ACK", {"id": ack_id})
        settled = (
            consumer.pending[: index + 1]
            if consumer.mode == "client"
            else [consumer.pending[index]]
        )
        for item in settled:
            consumer.pending.remove(item)
            if not nack:
                self.consumed[item[1]] += 1
        self.collect()

    @precondition(lambda self: bool(self.consumers))
    @rule(data=st.data(), graceful=st.booleans())
    def leave(self, data: st.DataObject, graceful: bool) -> None:
        consumer = data.draw(st.sampled_from(self.consumers))
        self.consumers.remove(consumer)
        if graceful:
            consumer.client.send("UNSUBSCRIBE", {"id": "1"})
            consumer.client.take()
        else:
            self.lb.drop(consumer.client)
        consumer.client.closed = True
        self.collect()

    @invariant()
    def nothing_lost_or_duplicated(self) -> None:
        pending = Counter(body for c in self.consumers for _, body in c.pending)
        assert all(n == 1 for n in (self.consumed + pending).values()), (self.consumed, pending)
        waiting = self.lb.broker.queue_depth(QUEUE)
        assert sum(self.consumed.values()) + sum(pending.values()) + waiting == len(self.sent)

    def teardown(self) -> None:
        """Settle everything, drain the queue: every message sent was consumed exactly once."""
        self.collect()
        while any(c.pending for c in self.consumers):
            for consumer in self.consumers:
                if consumer.mode == "client" and consumer.pending:
                    consumer.client.send("ACK", {"id": consumer.pending[-1][0]})  # cumulative
                else:
                    for ack_id, _ in consumer.pending:
                        consumer.client.send("ACK", {"id": ack_id})
                self.consumed.update(body for _, body in consumer.pending)
                consumer.pending.clear()
            self.collect()  # freed room lets the queue deliver its backlog
        drain = self.lb.client()
        drain.send("SUBSCRIBE", {"id": "d", "destination": QUEUE})
        self.consumed.update(frame.body for frame in drain.take())
        assert self.consumed == Counter(self.sent)


QueueMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestQueueMachine = QueueMachine.TestCase
