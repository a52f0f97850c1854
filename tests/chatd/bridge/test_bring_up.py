"""A RabbitMQ connection whose bring-up stops getting answers is dropped and made again
(found by the soak: one instance's bridge stayed silent for minutes after a RabbitMQ restart,
refusing every session SUBSCRIBE meanwhile)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
import trio

from chatd.bridge.amqp import AmqpLink, Command, Incoming, Outgoing
from tests.proxy import SwitchableProxy
from tests.waiting import wait_until

from .conftest import bindings

BINDS = 3_000


class Side:
    """The trio side of the link: records its state changes, and per key the number of the
    last bind RabbitMQ answered."""

    def __init__(self) -> None:
        self.states: list[tuple[bool, str]] = []
        self.answered: dict[str, int] = {}

    def on_state(self, connected: bool, reason: str) -> None:
        self.states.append((connected, reason))

    def on_confirm(self, batch_id: int, error: str | None, unavailable: bool) -> None:
        pass

    def on_bound(self, routing_key: str, seq: int) -> None:
        self.answered[routing_key] = max(seq, self.answered.get(routing_key, 0))

    def on_blocked(self, blocked: bool) -> None:
        pass

    def on_messages(self, batch: list[Incoming], ack: Command) -> None:
        pass


@asynccontextmanager
async def started(link: AmqpLink) -> AsyncIterator[AmqpLink]:
    """Start `link`; on exit, stop it and wait for its thread."""
    link.start()
    try:
        yield link
    finally:
        link.stop()
        await trio.to_thread.run_sync(link.thread.join, 10)


def make_link(url: str, proxy: SwitchableProxy, side: Side, name: str) -> AmqpLink:
    return AmqpLink(
        url.replace(":5672/", f":{proxy.port}/"),
        exchange=f"chatd.{name}",
        queue=f"chatd.{name}",
        prefetch=10,
        heartbeat=30,
        queue_expires_seconds=60,
        reconnect_initial=0.05,
        reconnect_max=0.2,
        bring_up_stall=0.5,
        side=side,
        trio_token=trio.lowlevel.current_trio_token(),
    )


async def logged(caplog: pytest.LogCaptureFixture, text: str) -> str:
    def found() -> list[str]:
        return [r.getMessage() for r in caplog.records if text in r.getMessage()]

    await wait_until(found)
    return found()[0]


async def connected(side: Side) -> None:
    await wait_until(lambda: any(up for up, _ in side.states))


async def test_a_silent_handshake_is_given_up_and_tried_again(
    rabbitmq_url: str, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = SwitchableProxy(("127.0.0.1", 5672))
    await nursery.start(proxy.run)
    proxy.holding = True  # RabbitMQ "accepts" and never answers
    side = Side()
    link = make_link(rabbitmq_url, proxy, side, "silent-handshake")
    with caplog.at_level(logging.WARNING, logger="chatd.bridge"):
        async with started(link):
            await logged(caplog, "rabbitmq unavailable")
            assert not any(up for up, _ in side.states)
            proxy.holding = False  # RabbitMQ answers again: the next attempt gets through
            await connected(side)


async def test_a_bring_up_that_stops_answering_is_dropped_and_made_again(
    rabbitmq_url: str, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = SwitchableProxy(("127.0.0.1", 5672))
    await nursery.start(proxy.run)
    side = Side()
    link = make_link(rabbitmq_url, proxy, side, "stalled-bring-up")
    for n in range(3_000):  # bindings to restore: the bring-up takes a while
        link.submit(("bind", f"user.u{n}", n + 1))
    with caplog.at_level(logging.WARNING, logger="chatd.bridge"):
        async with started(link):
            await wait_until(lambda: link._stage.startswith("re-binding ("), within=30)
            proxy.freeze()  # RabbitMQ goes silent mid-way; the socket stays up
            stalled = await logged(caplog, "bring-up stalled")
            assert "re-binding (" in stalled
            assert "of 3000 done)" in stalled
            await connected(side)  # a new connection, past the frozen one


async def test_restored_bindings_are_told_to_trio_without_a_round_trip_each(
    rabbitmq_url: str, nursery: trio.Nursery
) -> None:
    """The bridge thread must not wait on trio's loop once per restored binding: after a
    RabbitMQ restart the soak's bring-up told trio of 6 000 bindings one round trip at a
    time, a busy loop made that minutes, and the thread confirmed no publish meanwhile (the
    outbox said "sink unavailable" for eight minutes). Counted in trio loop iterations, not
    seconds: waiting once per binding takes at least one iteration each."""
    proxy = SwitchableProxy(("127.0.0.1", 5672))
    await nursery.start(proxy.run)
    side = Side()
    link = make_link(rabbitmq_url, proxy, side, "told-at-once")
    for n in range(BINDS):  # bindings the bring-up restores
        link.submit(("bind", f"user.u{n}", n + 1))
    iterations = 0  # trio loop iterations from the first binding told to the last

    async def count_iterations() -> None:
        nonlocal iterations
        while len(side.answered) < BINDS:  # one key each
            await trio.lowlevel.checkpoint()
            if side.answered:
                iterations += 1

    async with started(link):
        with trio.fail_after(60):
            await count_iterations()
        assert iterations < BINDS // 10, f"{iterations} loop iterations for {BINDS} bindings"


async def test_commands_queued_together_wake_the_thread_once_and_none_is_lost(
    rabbitmq_url: str, nursery: trio.Nursery
) -> None:
    """Each wake of the bridge thread is a pipe write and a thread switch; with 1 500 clients
    typing, an instance's trio thread spent 2.6 % of its time waking it once per command.
    Commands queued before the thread drains now share one wake, and a command queued while
    it drains is still taken (the interleaved half races the thread on purpose)."""
    proxy = SwitchableProxy(("127.0.0.1", 5672))
    await nursery.start(proxy.run)
    side = Side()
    link = make_link(rabbitmq_url, proxy, side, "one-wake")
    wakes = 0
    wake = link.ioloop.add_callback_threadsafe

    def counted(callback: Callable[[], None]) -> None:
        nonlocal wakes
        wakes += 1
        wake(callback)

    link.ioloop.add_callback_threadsafe = counted  # type: ignore[method-assign]
    async with started(link):
        await connected(side)
        wakes = 0
        for n in range(1_000):  # one turn of trio's loop
            link.submit(("bind", f"burst.{n}", n + 1))
        await wait_until(lambda: len(side.answered) == 1_000, within=30)
        assert wakes < 50, f"{wakes} wakes for 1 000 commands queued in one turn"
        for n in range(1_000, 3_000):  # a checkpoint every few: the thread drains meanwhile
            link.submit(("bind", f"burst.{n}", n + 1))
            if n % 7 == 0:
                await trio.lowlevel.checkpoint()
        await wait_until(lambda: len(side.answered) == 3_000, within=30)
        assert all(side.answered[f"burst.{n}"] == n + 1 for n in range(3_000))


class HoldingSide(Side):
    """Takes the consumed batches it is told of and acknowledges none of them yet (trio
    busy elsewhere)."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[Incoming]] = []
        self.acks: list[Command] = []

    def on_messages(self, batch: list[Incoming], ack: Command) -> None:
        self.batches.append(batch)
        self.acks.append(ack)

    @property
    def consumed(self) -> int:
        return sum(len(batch) for batch in self.batches)


async def test_deliveries_trio_has_not_taken_hold_neither_the_thread_nor_more_deliveries(
    rabbitmq_url: str, nursery: trio.Nursery
) -> None:
    """Found by the soak: the thread handed each read of deliveries to trio and waited for
    it, so bind answers waited behind trio's busy loop; after an instance restart its 1 500
    clients' SUBSCRIBEs were refused for minutes. Now the thread never waits, and what trio
    has not taken is bounded by RabbitMQ (prefetch 10 here), not by a wait in the thread."""
    proxy = SwitchableProxy(("127.0.0.1", 5672))
    await nursery.start(proxy.run)
    side = HoldingSide()
    link = make_link(rabbitmq_url, proxy, side, "held-deliveries")
    link.submit(("bind", "held.a", 1))
    async with started(link):
        await wait_until(lambda: "held.a" in side.answered)
        messages = [
            Outgoing("held.a", f"m{n}", "/topic/held", "message", "s", n, b"{}") for n in range(30)
        ]
        link.submit(("publish", 1, messages))
        await wait_until(lambda: side.consumed >= 10)
        link.submit(("bind", "held.b", 2))  # answered while nothing was acknowledged
        await wait_until(lambda: "held.b" in side.answered)
        assert side.consumed == 10  # the prefetch: RabbitMQ keeps the rest
        acked = 0

        def take_all() -> bool:  # trio takes what came: RabbitMQ delivers the rest
            nonlocal acked
            for ack in side.acks[acked:]:
                link.submit(ack)
            acked = len(side.acks)
            return side.consumed == 30

        await wait_until(take_all)


async def test_binds_and_unbinds_spread_over_channels_apply_in_each_keys_order(
    rabbitmq_url: str, nursery: trio.Nursery
) -> None:
    """(Un)binds go over several channels (one channel answers one at a time, and binds were
    most of what a restart's reconnect storm cost); each key keeps to one channel, so its
    bind, unbind and bind again are applied in the order submitted."""
    proxy = SwitchableProxy(("127.0.0.1", 5672))
    await nursery.start(proxy.run)
    side = Side()
    name = "ordered-binds"
    link = make_link(rabbitmq_url, proxy, side, name)
    async with started(link):
        await connected(side)
        seq = 0
        rebound: dict[str, int] = {}  # key -> number of its last bind

        def submit(kind: str, key: str) -> None:
            nonlocal seq
            seq += 1
            link.submit((kind, key, seq))
            if kind == "bind":
                rebound[key] = seq

        keys = [f"user.k{n}" for n in range(400)]
        for key in keys:
            submit("bind", key)
        for key in keys[1::2]:
            submit("unbind", key)
        for key in keys[1::4]:
            submit("bind", key)
        expected = set(keys[0::2]) | set(keys[1::4])
        await wait_until(
            lambda: all(side.answered.get(k) == rebound[k] for k in expected), within=60
        )
        bound = bindings(rabbitmq_url.rsplit("/", 1)[1], exchange=f"chatd.{name}")
        assert bound == expected
