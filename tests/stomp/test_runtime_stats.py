"""`BrokerRuntime.stats`: what an exporter reads — frames by command both ways, ERRORs by
reason (bounded), sessions open."""

from __future__ import annotations

import trio
import trio.testing

from stomp.trio import BrokerRuntime, RuntimeStats, TransportInfo, serve_stream
from stomp.trio._stats import OTHER_REASON

from .stomp_peer import Peer

TOPIC = "/topic/t"


def start(nursery: trio.Nursery, runtime: BrokerRuntime) -> Peer:
    client, server = trio.testing.memory_stream_pair()
    nursery.start_soon(serve_stream, runtime, server, TransportInfo("memory"))
    return Peer(client)


async def test_frames_and_sessions_are_counted(nursery: trio.Nursery) -> None:
    runtime = BrokerRuntime()
    stats = runtime.stats
    reader, writer = start(nursery, runtime), start(nursery, runtime)
    await reader.connect()
    await writer.connect()
    await reader.subscribe(TOPIC)  # with a receipt
    for n in range(3):
        await writer.send("SEND", {"destination": TOPIC}, b"m%d" % n)
    for _ in range(3):
        assert (await reader.frame()).command == "MESSAGE"
    await trio.testing.wait_all_tasks_blocked()
    assert stats.sessions_open == 2
    assert stats.frames_in == {"CONNECT": 2, "SUBSCRIBE": 1, "SEND": 3}
    assert stats.frames_out == {"CONNECTED": 2, "RECEIPT": 1, "MESSAGE": 3}
    assert stats.errors == {}

    await writer.stream.send_all(b"BOGUS\n\n\0")
    error = await writer.frame()
    assert error.command == "ERROR"
    assert await writer.eof()
    await trio.testing.wait_all_tasks_blocked()
    assert stats.frames_in["INVALID"] == 1
    assert stats.frames_out["ERROR"] == 1
    assert stats.errors == {error.get("message"): 1}
    assert (stats.sessions_opened, stats.sessions_closed, stats.sessions_open) == (2, 1, 1)


async def test_error_reason_with_escaped_characters_is_readable(nursery: trio.Nursery) -> None:
    runtime = BrokerRuntime(session_ids=iter(["only"]))
    peer = start(nursery, runtime)
    await peer.connect()
    runtime.refuse("only", "bad: thing\nhere")
    assert (await peer.frame()).command == "ERROR"
    assert runtime.stats.errors == {"bad: thing here": 1}


def test_reasons_are_bounded() -> None:
    stats = RuntimeStats(max_reasons=2)
    for reason in ("a", "b", "c", "d", "a"):
        stats.error(reason)
    assert stats.errors == {"a": 2, "b": 1, OTHER_REASON: 2}
