"""The trio runtime and session pump over in-memory streams (MockClock for every timer)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio
import trio.lowlevel
import trio.testing

from stomp import Connect, Send, Subscribe
from stomp.broker import Broker, Limits
from stomp.trio import (
    CREDENTIALS_EXPIRED_MESSAGE,
    Authenticated,
    BrokerRuntime,
    Refused,
    TransportInfo,
    serve_stream,
)
from stomp.trio._session import TIMER_GRAIN

from .stomp_peer import Peer

TOPIC = "/topic/t"


def start(
    nursery: trio.Nursery,
    runtime: BrokerRuntime,
    stream_pair: Callable[[], tuple[trio.abc.HalfCloseableStream, trio.abc.HalfCloseableStream]]
    | None = None,
) -> Peer:
    client, server = (stream_pair or trio.testing.memory_stream_pair)()
    nursery.start_soon(serve_stream, runtime, server, TransportInfo("memory"))
    return Peer(client)


async def test_connect_subscribe_send_round_trip(nursery: trio.Nursery) -> None:
    runtime = BrokerRuntime()
    peer = start(nursery, runtime)
    connected = await peer.connect()
    assert connected.get("version") == "1.2"
    assert connected.get("heart-beat") == "0,0"
    await peer.subscribe(TOPIC)
    await peer.send("SEND", {"destination": TOPIC, "receipt": "r2"}, b"hello")
    message = await peer.frame()
    assert (message.command, message.get("destination"), message.body) == (
        "MESSAGE",
        TOPIC,
        b"hello",
    )
    assert (await peer.frame()).get("receipt-id") == "r2"
    assert runtime.session_count == 1
    await peer.send("DISCONNECT", {"receipt": "bye"})
    assert (await peer.frame()).get("receipt-id") == "bye"
    assert await peer.eof()
    await wait_until(lambda: runtime.session_count == 0)


async def test_server_heartbeat_sent_when_idle(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    runtime = BrokerRuntime(heartbeat=(1000, 0))
    peer = start(nursery, runtime)
    assert (await peer.connect(heartbeat="0,1000")).get("heart-beat") == "1000,0"
    beats = []
    for _ in range(3):
        start_time = trio.current_time()
        assert await peer.stream.receive_some() == b"\n"
        beats.append(trio.current_time() - start_time)
    assert beats == pytest.approx([1.0, 1.0, 1.0])


async def test_heartbeats_of_sessions_due_close_together_go_out_in_one_round(
    nursery: trio.Nursery, mock_clock: trio.testing.MockClock
) -> None:
    """Each session's timer wakes on the grain's grid: 1 500 sessions beating every 3 s, each
    woken at its own time, cost a tenth of a core in loop rounds and cancellations."""
    runtime = BrokerRuntime(heartbeat=(1000, 0))
    peers = []
    for _ in range(40):  # connected 13 ms apart: 40 different times within a second
        peer = start(nursery, runtime)
        await peer.connect(heartbeat="0,1000")
        peers.append(peer)
        mock_clock.jump(0.013)
    beats: list[float] = []

    async def listen(peer: Peer) -> None:
        while True:
            assert await peer.stream.receive_some() == b"\n"
            beats.append(trio.current_time())

    for peer in peers:
        nursery.start_soon(listen, peer)
    start_time = trio.current_time()
    for _ in range(300):  # 3 s in steps of 10 ms
        mock_clock.jump(0.01)
        await trio.testing.wait_all_tasks_blocked()
    assert len(beats) >= 100  # every session beat about every second
    rounds = {round(t, 6) for t in beats}
    assert len(rounds) <= 3 / TIMER_GRAIN + 1, sorted(rounds)
    assert max(beats) - start_time <= 3.0


async def test_heartbeat_timeout_closes_silent_peer(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    runtime = BrokerRuntime(heartbeat=(0, 1000))
    peer = start(nursery, runtime)
    await peer.connect(heartbeat="1000,0")
    began = trio.current_time()
    error = await peer.frame()
    assert (error.command, error.get("message")) == ("ERROR", "heart-beat timeout")
    assert trio.current_time() - began == pytest.approx(1.5)
    assert await peer.eof()


async def test_peer_that_neither_reads_nor_sends_is_closed(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    runtime = BrokerRuntime(heartbeat=(0, 1000), close_timeout=2)
    peer = start(nursery, runtime, trio.testing.lockstep_stream_pair)
    await peer.connect(heartbeat="1000,0")
    await peer.subscribe(TOPIC)
    await peer.send("SEND", {"destination": TOPIC}, b"x")  # its MESSAGE is never read
    # Heart-beat timeout after 1.5 s, then 2 s to flush the ERROR, which it does not read.
    await trio.sleep(3.4)
    assert runtime.session_count == 1
    await trio.sleep(0.2)
    assert runtime.session_count == 0


async def test_heartbeats_from_peer_keep_session_alive(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    runtime = BrokerRuntime(heartbeat=(0, 1000))
    peer = start(nursery, runtime)
    await peer.connect(heartbeat="1000,0")
    for _ in range(10):
        await trio.sleep(1.2)
        await peer.stream.send_all(b"\n")
    await peer.subscribe(TOPIC)  # still served
    assert runtime.session_count == 1


async def test_a_stalled_loop_does_not_blame_peers_whose_beats_wait_unread(
    nursery: trio.Nursery, mock_clock: trio.testing.MockClock
) -> None:
    """Found by the soak (issue 22): after the process stalls (SIGSTOP, a VM pause, a starved
    CPU) the timer task and the reader wake in the same scheduling round; the timer used to
    refuse the peer ("heart-beat timeout") when it ran first, while the peer's heart-beat sat
    in the transport, unread. trio runs a round in insertion order or reversed at random, so
    each stall below caught the old code with probability 1/2: ten of them, 1 - 2**-10."""
    runtime = BrokerRuntime(heartbeat=(0, 1000))  # beats expected every 1 s, 1.5 s grace
    streams = [trio.testing.memory_stream_pair() for _ in range(4)]
    peers = [Peer(client) for client, _ in streams]
    for _, server in streams:
        nursery.start_soon(serve_stream, runtime, server, TransportInfo("memory"))
    for peer in peers:
        await peer.connect(heartbeat="1000,0")
    for _ in range(10):
        await trio.testing.wait_all_tasks_blocked()
        for _, server in streams:  # each peer's beat arrives while the process is stopped
            server.receive_stream.put_data(b"\n")
        mock_clock.jump(5.0)  # ... for longer than the grace
        await trio.testing.wait_all_tasks_blocked()
        assert runtime.session_count == len(peers)
    for peer in peers:
        await peer.subscribe(TOPIC)  # all still served


async def test_connect_deadline(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    runtime = BrokerRuntime(connect_timeout=10)
    began = trio.current_time()
    peer = start(nursery, runtime)
    error = await peer.frame()
    assert (error.command, error.get("message")) == ("ERROR", "connect timeout")
    assert trio.current_time() - began == pytest.approx(10)
    assert await peer.eof()
    assert runtime.session_count == 0


async def test_slow_consumer_is_closed_fast_one_gets_everything(nursery: trio.Nursery) -> None:
    runtime = BrokerRuntime(max_pending_frames=10)
    fast = start(nursery, runtime)
    slow = start(nursery, runtime, trio.testing.lockstep_stream_pair)
    for peer in (fast, slow):
        await peer.connect()
        await peer.subscribe(TOPIC)
    received: list[bytes] = []

    async def collect() -> None:
        while len(received) < 100:
            received.append((await fast.frame()).body)

    async with trio.open_nursery() as inner:
        inner.start_soon(collect)
        for n in range(100):
            runtime.publish(TOPIC, str(n).encode())
            await trio.lowlevel.checkpoint()
    assert received == [str(n).encode() for n in range(100)]
    # The slow peer now reads: what was queued up to the bound, the ERROR, then the end.
    frames = await slow.frames_until_eof()
    assert frames[-1].command == "ERROR"
    assert frames[-1].get("message") == "slow consumer"
    assert all(frame.command == "MESSAGE" for frame in frames[:-1])
    # The batch the writer was blocked on, plus at most the bound.
    assert len(frames) - 1 < 30
    await wait_until(lambda: runtime.session_count == 1)


class CountingStream(trio.abc.Stream):
    """A memory stream that counts `send_all` calls."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.sends = 0

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.sends += 1
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_writer_sends_queued_frames_in_one_send_all(nursery: trio.Nursery) -> None:
    runtime = BrokerRuntime()
    client, server = trio.testing.memory_stream_pair()
    counting = CountingStream(server)
    nursery.start_soon(serve_stream, runtime, counting)
    peer = Peer(client)
    await peer.connect()
    await peer.subscribe(TOPIC)
    before = counting.sends
    for n in range(1000):
        runtime.publish(TOPIC, str(n).encode())
    bodies = [(await peer.frame()).body for _ in range(1000)]
    assert bodies == [str(n).encode() for n in range(1000)]
    assert counting.sends - before == 1


class Hooks:
    """Application hooks for the tests: refuse some names, handle /app/ destinations."""

    def __init__(self) -> None:
        self.app_sends: list[tuple[str, str | None, Send]] = []
        self.runtime: BrokerRuntime | None = None

    async def authenticate(self, event: Connect, transport: TransportInfo) -> str | None:
        await trio.sleep(0.01)  # a hook may take time; frames after it must wait
        if event.login == "mallory":
            raise Refused("bad credentials", "unknown user")
        if event.login == "bug":
            raise RuntimeError("hook bug")
        return event.login

    async def authorize_subscribe(
        self, session: str, principal: str | None, event: Subscribe
    ) -> None:
        await trio.sleep(0.01)
        if event.destination == "/topic/secret":
            raise Refused("forbidden", f"{principal} may not subscribe")

    def subscribed(self, session: str, principal: str | None, event: Subscribe) -> None:
        if event.destination == "/topic/greeted":  # written after the RECEIPT, before live
            runtime = self.runtime
            assert runtime is not None
            runtime.deliver(session, event.id, event.destination, b"snapshot")

    async def authorize_send(self, principal: str | None, event: Send) -> None:
        if event.destination == "/topic/readonly":
            raise Refused("forbidden", "read-only destination")

    async def on_app_send(self, session: str, principal: str | None, event: Send) -> bool:
        if not event.destination.startswith("/app/"):
            return False
        self.app_sends.append((session, principal, event))
        return True


@pytest.mark.parametrize(
    ("login", "frames", "message"),
    [
        ("mallory", [], "bad credentials"),
        ("bug", [], "internal server error"),
        ("alice", [("SUBSCRIBE", {"destination": "/topic/secret", "id": "1"})], "forbidden"),
        ("alice", [("SEND", {"destination": "/topic/readonly"})], "forbidden"),
    ],
)
async def test_hooks_refuse_with_error_and_close(
    nursery: trio.Nursery, login: str, frames: list[tuple[str, dict[str, str]]], message: str
) -> None:
    runtime = BrokerRuntime(hooks=Hooks())
    peer = start(nursery, runtime)
    await peer.send("CONNECT", {"accept-version": "1.2", "host": "x", "login": login})
    for command, headers in frames:
        await peer.send(command, {**headers, "receipt": "r"})
    replies = await peer.frames_until_eof()
    assert replies[-1].command == "ERROR"
    assert replies[-1].get("message") == message
    if frames:
        assert [frame.command for frame in replies] == ["CONNECTED", "ERROR"]
        assert replies[-1].get("receipt-id") == "r"
    await wait_until(lambda: runtime.session_count == 0)


async def test_hooks_keep_frame_order(nursery: trio.Nursery) -> None:
    runtime = BrokerRuntime(hooks=Hooks())
    peer = start(nursery, runtime)
    # Everything in one write: the slow hooks must not let later frames overtake.
    await peer.send_many(
        [
            ("CONNECT", {"accept-version": "1.2", "host": "x", "login": "alice"}, b""),
            ("SUBSCRIBE", {"destination": TOPIC, "id": "1", "receipt": "sub"}, b""),
            ("SEND", {"destination": TOPIC}, b"first"),
        ]
    )
    frames = [await peer.frame() for _ in range(3)]
    assert [frame.command for frame in frames] == ["CONNECTED", "RECEIPT", "MESSAGE"]
    assert frames[0].get("user-name") == "alice"
    assert runtime.principal(frames[0].get("session") or "") == "alice"


class Expiring(Hooks):
    """Credentials valid for as many seconds as the login's number (`login: "u:30"`)."""

    async def authenticate(self, event: Connect, transport: TransportInfo) -> Authenticated:
        name, _, seconds = (event.login or "").partition(":")
        return Authenticated(name, float(seconds) if seconds else None)


async def test_session_closed_with_error_when_credentials_expire(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    runtime = BrokerRuntime(hooks=Expiring(), heartbeat=(1000, 0))
    peer = start(nursery, runtime)
    began = trio.current_time()
    connected = await peer.connect(heartbeat="0,1000", login="alice:30")
    assert connected.get("user-name") == "alice"
    await peer.subscribe(TOPIC)
    with trio.fail_after(100):  # heart-beats meanwhile do not keep it alive
        frames = await peer.frames_until_eof()
    assert frames[-1].command == "ERROR"
    assert frames[-1].get("message") == CREDENTIALS_EXPIRED_MESSAGE
    assert trio.current_time() - began == pytest.approx(30, abs=0.1)
    await wait_until(lambda: runtime.session_count == 0)


async def test_credentials_without_expiry_keep_the_session(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    runtime = BrokerRuntime(hooks=Expiring())
    peer = start(nursery, runtime)
    await peer.connect(login="bob")
    await trio.sleep(3600)
    await peer.subscribe(TOPIC)
    assert runtime.principal("s1") == "bob"


async def test_blocked_hook_does_not_hold_back_deliveries(nursery: trio.Nursery) -> None:
    release = trio.Event()

    class Blocking(Hooks):
        async def authorize_send(self, principal: str | None, event: Send) -> None:
            await release.wait()

    runtime = BrokerRuntime(hooks=Blocking())
    peer = start(nursery, runtime)
    await peer.connect(login="alice")
    await peer.subscribe(TOPIC)
    await peer.send_many(
        [
            ("SUBSCRIBE", {"destination": "/topic/u", "id": "2", "receipt": "u"}, b""),
            ("SEND", {"destination": TOPIC, "receipt": "s"}, b"mine"),
        ]
    )
    assert (await peer.frame()).get("receipt-id") == "u"  # queued before the hook blocked
    runtime.publish(TOPIC, b"from elsewhere")  # while this session's reader waits on the hook
    assert (await peer.frame()).body == b"from elsewhere"
    release.set()
    frames = [await peer.frame() for _ in range(2)]
    assert [(f.command, f.body) for f in frames] == [("MESSAGE", b"mine"), ("RECEIPT", b"")]


async def test_app_send_goes_to_hook_not_broker(nursery: trio.Nursery) -> None:
    hooks = Hooks()
    runtime = BrokerRuntime(hooks=hooks)
    peer = start(nursery, runtime)
    await peer.connect(login="alice")
    await peer.subscribe("/app/chat.send")
    await peer.send("SEND", {"destination": "/app/chat.send", "receipt": "r7"}, b"{}")
    await wait_until(lambda: bool(hooks.app_sends))
    session, principal, event = hooks.app_sends[0]
    assert (principal, event.frame.body, event.receipt) == ("alice", b"{}", "r7")
    runtime.receipt(session, "r7")  # the application answers once its work is done
    reply = await peer.frame()
    assert (reply.command, reply.get("receipt-id")) == ("RECEIPT", "r7")  # no MESSAGE before


async def test_violation_gets_error_and_server_keeps_serving(nursery: trio.Nursery) -> None:
    runtime = BrokerRuntime()
    bad = start(nursery, runtime)
    await bad.connect()
    await bad.stream.send_all(b"NOT-A-COMMAND\n\n\0")
    frames = await bad.frames_until_eof()
    assert (frames[-1].command, frames[-1].get("message")) == ("ERROR", "unknown command")
    good = start(nursery, runtime)
    await good.connect()
    await good.subscribe(TOPIC)


async def test_transport_loss_requeues_unacked(nursery: trio.Nursery) -> None:
    runtime = BrokerRuntime()
    first = start(nursery, runtime)
    await first.connect()
    await first.subscribe("/queue/q", ack="client-individual")
    runtime.publish("/queue/q", b"job")
    assert (await first.frame()).body == b"job"
    await first.stream.aclose()  # gone without ACK or DISCONNECT
    await wait_until(lambda: runtime.session_count == 0)
    second = start(nursery, runtime)
    await second.connect()
    await second.send("SUBSCRIBE", {"destination": "/queue/q", "id": "1"})
    assert (await second.frame()).body == b"job"


async def test_destination_active_callback(nursery: trio.Nursery) -> None:
    changes: list[tuple[str, bool]] = []
    runtime = BrokerRuntime(on_destination_active=lambda key, active: changes.append((key, active)))
    peer = start(nursery, runtime)
    await peer.connect()
    await peer.subscribe(TOPIC)
    assert changes == [(TOPIC, True)]
    await peer.stream.aclose()
    await wait_until(lambda: runtime.session_count == 0)
    assert changes == [(TOPIC, True), (TOPIC, False)]


async def test_graceful_shutdown(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    runtime = BrokerRuntime(Broker(limits=Limits()))
    peers = [start(nursery, runtime) for _ in range(3)]
    for peer in peers[:2]:
        await peer.connect()
        await peer.subscribe(TOPIC)
    await trio.sleep(0.1)  # the third one has not sent CONNECT yet
    await runtime.shutdown(2)
    assert runtime.session_count == 0
    for peer in peers:
        frames = await peer.frames_until_eof()
        assert (frames[-1].command, frames[-1].get("message")) == ("ERROR", "server shutting down")
    late = start(nursery, runtime)
    frames = await late.frames_until_eof()
    assert [frame.get("message") for frame in frames] == ["server shutting down"]


async def test_shutdown_cuts_off_a_peer_that_never_reads(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    runtime = BrokerRuntime(close_timeout=1)
    stuck = start(nursery, runtime, trio.testing.lockstep_stream_pair)
    await stuck.connect()
    await stuck.subscribe(TOPIC)
    runtime.publish(TOPIC, b"x" * 100)  # the writer now blocks: nobody reads
    await trio.sleep(1)
    began = trio.current_time()
    await runtime.shutdown(3)
    assert runtime.session_count == 0
    assert trio.current_time() - began <= 3 + 1


async def test_principal_active_callback_follows_first_and_last_session(
    nursery: trio.Nursery,
) -> None:
    changes: list[tuple[str, bool]] = []
    runtime = BrokerRuntime(
        hooks=Hooks(), on_principal_active=lambda who, active: changes.append((who, active))
    )
    first, second = start(nursery, runtime), start(nursery, runtime)
    for peer in (first, second):
        await peer.send("CONNECT", {"accept-version": "1.2", "host": "x", "login": "alice"})
        assert (await peer.frame()).command == "CONNECTED"
    assert changes == [("alice", True)]
    await first.stream.aclose()
    await wait_until(lambda: runtime.session_count == 1)
    assert changes == [("alice", True)]
    await second.send("DISCONNECT", {"receipt": "bye"})
    await wait_until(lambda: runtime.session_count == 0)
    assert changes == [("alice", True), ("alice", False)]


async def test_subscribed_hook_writes_after_the_receipt_before_live_messages(
    nursery: trio.Nursery,
) -> None:
    hooks = Hooks()
    runtime = hooks.runtime = BrokerRuntime(hooks=hooks)
    peer = start(nursery, runtime)
    await peer.send_many(
        [
            ("CONNECT", {"accept-version": "1.2", "host": "x", "login": "alice"}, b""),
            ("SUBSCRIBE", {"destination": "/topic/greeted", "id": "1", "receipt": "sub"}, b""),
            ("SEND", {"destination": "/topic/greeted"}, b"live"),
        ]
    )
    frames = [await peer.frame() for _ in range(4)]
    assert [(f.command, f.body) for f in frames] == [
        ("CONNECTED", b""),
        ("RECEIPT", b""),
        ("MESSAGE", b"snapshot"),
        ("MESSAGE", b"live"),
    ]


async def test_subscribed_hook_not_called_for_a_subscription_the_broker_refused(
    nursery: trio.Nursery,
) -> None:
    hooks = Hooks()
    runtime = hooks.runtime = BrokerRuntime(Broker(limits=Limits(max_subscriptions=1)), hooks=hooks)
    peer = start(nursery, runtime)
    await peer.send_many(
        [
            ("CONNECT", {"accept-version": "1.2", "host": "x", "login": "alice"}, b""),
            ("SUBSCRIBE", {"destination": TOPIC, "id": "1"}, b""),
            ("SUBSCRIBE", {"destination": "/topic/greeted", "id": "2"}, b""),
        ]
    )
    replies = await peer.frames_until_eof()
    assert [frame.command for frame in replies] == ["CONNECTED", "ERROR"]


async def wait_until(condition: Callable[[], bool]) -> None:
    """Let every task run until all are blocked, then check `condition` (memory streams only:
    nothing is waiting on the network)."""
    await trio.testing.wait_all_tasks_blocked()
    assert condition()


class Replaying(Hooks):
    """Replays "history" from authorize_subscribe while a publisher keeps publishing live."""

    def __init__(self) -> None:
        super().__init__()
        self.runtime: BrokerRuntime | None = None
        self.published = 0
        self.at_return: int | None = None

    async def authorize_subscribe(
        self, session: str, principal: str | None, event: Subscribe
    ) -> None:
        assert self.runtime is not None
        for _ in range(5):  # awaits during which live messages go by unseen
            await trio.lowlevel.checkpoint()
        for n in range(self.published):  # the "replay", after the last await
            self.runtime.deliver(
                session, event.id, event.destination, str(n).encode(), (("x-replayed", "yes"),)
            )
        self.at_return = self.published


async def test_deliver_then_subscription_with_no_gap_and_no_duplicate(
    nursery: trio.Nursery,
) -> None:
    hooks = Replaying()
    runtime = hooks.runtime = BrokerRuntime(hooks=hooks)
    peer = start(nursery, runtime)
    await peer.connect()

    async def publisher() -> None:
        while hooks.published < 200:
            runtime.publish(TOPIC, str(hooks.published).encode())
            hooks.published += 1
            await trio.lowlevel.checkpoint()

    nursery.start_soon(publisher)
    await peer.send(
        "SUBSCRIBE", {"destination": TOPIC, "id": "1", "ack": "client-individual", "receipt": "sub"}
    )
    frames = []
    with trio.fail_after(5):  # a lost message would otherwise hang here
        while len(frames) < 200:
            frame = await peer.frame()
            if frame.command == "MESSAGE":
                frames.append(frame)
    assert hooks.at_return is not None
    assert 0 < hooks.at_return < 200
    assert [int(frame.body) for frame in frames] == list(range(200))
    replayed = frames[: hooks.at_return]
    assert {
        (f.get("subscription"), f.get("destination"), f.get("x-replayed"), f.get("ack"))
        for f in replayed
    } == {("1", TOPIC, "yes", None)}
    assert all(f.get("x-replayed") is None and f.get("ack") for f in frames[hooks.at_return :])
    ids = [frame.get("message-id") for frame in frames]
    assert len(set(ids)) == len(ids)


async def test_deliver_to_a_gone_session_is_a_no_op() -> None:
    runtime = BrokerRuntime()
    runtime.deliver("nobody", "1", TOPIC, b"x")
    assert runtime.session_count == 0
