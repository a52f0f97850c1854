"""Regression guard for the hypercorn 0.18 trio-worker bug fixed in `chatd.http.keepalive`.

Over a raw socket: an idle keep-alive connection must be closed after ``keepalive_timeout``,
and ``Connection: close`` / HTTP/1.0 requests must be closed right after the answer. Without
the fix, none of these sockets is ever closed by the server. And a closed connection's
objects are freed at once (`chatd.http.server.release_connection`).
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Iterator

import pytest
import trio
from hypercorn.trio.tcp_server import TCPServer

from tests.chatd.api.conftest import Server, start_server
from tests.chatd.raw_http import read_response
from tests.waiting import wait_until

KEEPALIVE = 0.5
SLACK = 1.0


@pytest.fixture
async def short_keepalive_server(
    nursery, sqlite_store, verifier, clock, limits
) -> AsyncIterator[Server]:
    server = await start_server(
        nursery, sqlite_store, verifier, clock, limits, keepalive_timeout=KEEPALIVE
    )
    yield server
    server.stop.set()


async def _seconds_until_closed(stream: trio.SocketStream, limit: float) -> float:
    start = trio.current_time()
    with trio.fail_after(limit):
        while await stream.receive_some(65536):
            pass
    return trio.current_time() - start


async def test_idle_keepalive_connection_is_closed_after_the_timeout(
    short_keepalive_server,
) -> None:
    host, port = short_keepalive_server.address
    async with await trio.open_tcp_stream(host, port) as stream:
        buffer = bytearray()
        for _ in range(2):  # the connection is reused while it is busy...
            await stream.send_all(b"GET /health/live HTTP/1.1\r\nHost: t\r\n\r\n")
            assert (await read_response(stream, buffer)).startswith(b"HTTP/1.1 200")
        # ...and closed once idle for keepalive_timeout.
        waited = await _seconds_until_closed(stream, KEEPALIVE + SLACK)
        assert waited >= KEEPALIVE * 0.8


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /health/live HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        b"GET /health/live HTTP/1.0\r\n\r\n",
        b"GET /api/chat/unread HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",  # a 401
        b"GET /missing HTTP/1.0\r\n\r\n",  # a 404
    ],
    ids=["connection-close", "http-1.0", "error-401-close", "error-404-http-1.0"],
)
async def test_close_requests_are_closed_at_once(short_keepalive_server, request_bytes) -> None:
    host, port = short_keepalive_server.address
    async with await trio.open_tcp_stream(host, port) as stream:
        await stream.send_all(request_bytes)
        buffer = bytearray()
        assert (await read_response(stream, buffer)).startswith(b"HTTP/1.1 ")
        assert await _seconds_until_closed(stream, KEEPALIVE / 2) < KEEPALIVE / 2


async def test_many_idle_connections_are_all_reaped(short_keepalive_server) -> None:
    host, port = short_keepalive_server.address
    streams = [await trio.open_tcp_stream(host, port) for _ in range(20)]
    try:
        for stream in streams:
            await stream.send_all(b"GET /health/live HTTP/1.1\r\nHost: t\r\n\r\n")
        with trio.fail_after(KEEPALIVE + SLACK):
            for stream in streams:
                buffer = bytearray()
                await read_response(stream, buffer)
                while await stream.receive_some(65536):
                    pass
    finally:
        for stream in streams:
            await stream.aclose()


@pytest.fixture
def collector_off() -> Iterator[None]:
    """The cyclic garbage collector off for the test: what is freed is freed by reference
    counting, as it must be between chatd's rare collections."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def connection_servers() -> int:
    """Hypercorn connection servers still in memory, in use or garbage."""
    return sum(isinstance(o, TCPServer) for o in gc.get_objects())


async def test_a_closed_connection_is_freed_without_the_cyclic_collector(
    short_keepalive_server, collector_off
) -> None:
    """Each closed HTTP connection's objects go at once: a cycle through Hypercorn's server
    kept every one until a full collection (rare under chatd's thresholds), so the soak's
    instances grew with every connection they had served."""
    host, port = short_keepalive_server.address
    for _ in range(20):
        async with await trio.open_tcp_stream(host, port) as stream:
            await stream.send_all(
                b"GET /health/live HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
            )
            await _seconds_until_closed(stream, SLACK)
    await wait_until(lambda: connection_servers() == 0, within=5.0)
