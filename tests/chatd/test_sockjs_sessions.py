"""SockJS sessions over a real broker runtime, without HTTP, on trio's autojump clock: the
disconnect delay, heart-beat frames, one receiver at a time, the close frame until the
session is forgotten, and a client that stops receiving turning into a slow consumer."""

from __future__ import annotations

import json

import trio
import trio.lowlevel
import trio.testing

from chatd.realtime.sockjs import SockJSSessions, SockJSSettings
from chatd.realtime.sockjs.session import SockJSSession
from stomp.trio import SLOW_CONSUMER_MESSAGE, BrokerRuntime, TransportInfo

CONNECT = "CONNECT\naccept-version:1.2\nheart-beat:0,0\n\n\x00"


def make(**settings: float) -> SockJSSessions:
    runtime = BrokerRuntime(max_pending_frames=10, max_pending_bytes=64 * 1024)
    return SockJSSessions(runtime, SockJSSettings(**settings))  # type: ignore[arg-type]


async def poll(sessions: SockJSSessions, session: SockJSSession) -> list[str]:
    return [frame async for frame in sessions.frames(session, streaming=False)]


async def connected(sessions: SockJSSessions, nursery: trio.Nursery) -> SockJSSession:
    session = sessions.create("s", TransportInfo("test"), nursery)
    assert await poll(sessions, session) == ["o"]
    await session.feed([CONNECT])
    [frame] = await poll(sessions, session)
    assert json.loads(frame[1:])[0].startswith("CONNECTED\n")
    return session


async def test_session_without_receiver_closes_after_the_delay(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    sessions = make(disconnect_delay=5.0, heartbeat=25.0)
    session = await connected(sessions, nursery)
    assert (sessions.sessions_open, sessions.runtime.session_count) == (1, 1)
    await trio.sleep(4.9)
    assert not session.closed
    await trio.sleep(0.2)
    assert session.closed
    await trio.sleep(0.01)  # the session task winds down
    assert (sessions.sessions_open, sessions.runtime.session_count) == (0, 0)
    # Nobody was listening: forgotten at once (a late poll starts a new session).
    assert sessions.lookup("s") is None
    assert sessions.sessions_opened_total == 1


async def test_idle_receiver_gets_heartbeats_and_keeps_the_session(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    sessions = make(disconnect_delay=1.0, heartbeat=3.0)
    session = await connected(sessions, nursery)
    start = trio.current_time()
    assert await poll(sessions, session) == ["h"]
    assert trio.current_time() - start == 3.0
    frames = []
    async for frame in sessions.frames(session, streaming=True):
        frames.append(frame)
        if len(frames) == 3:
            break
    assert frames == ["h", "h", "h"]
    assert not session.closed


async def test_one_receiver_at_a_time(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    sessions = make(disconnect_delay=1.0, heartbeat=3.0)
    session = await connected(sessions, nursery)
    first: list[str] = []

    async def receive() -> None:
        first.extend(await poll(sessions, session))

    nursery.start_soon(receive)
    await trio.sleep(1.0)
    assert await poll(sessions, session) == ['c[2010,"Another connection still open"]']
    await session.feed(["SUBSCRIBE\nid:1\ndestination:/topic/t\nreceipt:r\n\n\x00"])
    await trio.sleep(0.1)
    [frame] = first
    assert "receipt-id:r" in json.loads(frame[1:])[0]


async def test_client_that_stops_receiving_is_a_slow_consumer(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    runtime = BrokerRuntime(max_pending_frames=5)
    sessions = SockJSSessions(
        runtime, SockJSSettings(disconnect_delay=60.0, max_pending_bytes=1000)
    )
    session = sessions.create("s", TransportInfo("test"), nursery)
    assert await poll(sessions, session) == ["o"]
    await session.feed([CONNECT, "SUBSCRIBE\nid:1\ndestination:/topic/t\n\n\x00"])
    await trio.sleep(1)
    for n in range(100):
        runtime.publish("/topic/t", b"x" * 200 + str(n).encode())
        await trio.sleep(0.01)
    await trio.sleep(1)
    # The SockJS buffer filled and the broker's outbox behind it overflowed. The client that
    # comes back gets what was queued, the ERROR, and the close frame.
    stomp: list[str] = []
    while (frames := await poll(sessions, session))[0].startswith("a"):
        stomp += [f for m in json.loads(frames[0][1:]) for f in m.split("\x00") if f]
    assert frames == ['c[3000,"Go away!"]']
    assert stomp[0].startswith("CONNECTED\n")
    assert 1 < sum(f.startswith("MESSAGE\n") for f in stomp) < 100
    assert stomp[-1].startswith("ERROR\n")
    assert f"message:{SLOW_CONSUMER_MESSAGE}" in stomp[-1]
    await trio.sleep(0.1)  # the session task winds down
    assert (runtime.session_count, sessions.sessions_open) == (0, 0)


async def test_gone_client_is_closed_within_the_close_timeout(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    runtime = BrokerRuntime(max_pending_frames=5, close_timeout=2.0)
    sessions = SockJSSessions(
        runtime, SockJSSettings(disconnect_delay=60.0, max_pending_bytes=1000)
    )
    session = sessions.create("s", TransportInfo("test"), nursery)
    assert await poll(sessions, session) == ["o"]
    await session.feed([CONNECT, "SUBSCRIBE\nid:1\ndestination:/topic/t\n\n\x00"])
    for n in range(20):
        runtime.publish("/topic/t", b"x" * 200 + str(n).encode())
        await trio.sleep(0.01)
    await trio.sleep(2.5)  # nobody drains the buffer: the ERROR cannot be written
    assert (runtime.session_count, sessions.sessions_open) == (0, 0)
    assert session.closed


async def test_closed_session_is_remembered_while_clients_ask(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    sessions = make(disconnect_delay=1.0, heartbeat=25.0)
    session = await connected(sessions, nursery)
    await session.feed(["DISCONNECT\n\n\x00"])
    await trio.sleep(0.1)
    assert session.closed
    for _ in range(5):  # 4 s in all, four times the delay, one request every 0.8 s
        await trio.sleep(0.8)
        assert sessions.lookup("s") is session
        assert await poll(sessions, session) == ['c[3000,"Go away!"]']
    await trio.sleep(1.1)
    assert sessions.lookup("s") is None
