"""`serve_tcp`, `serve_websocket` and `python -m stomp` over real sockets on 127.0.0.1."""

from __future__ import annotations

import functools
import os
import re
import signal
import subprocess
import sys

import pytest
import trio
import trio_websocket

from stomp import Frame, FrameDecoder
from stomp.trio import BrokerRuntime, MessageStream, serve_tcp, serve_websocket

from .conftest import start_broker, stop_broker
from .stomp_peer import Peer, _encode, frames_per_message, receipt_burst

TOPIC = "/topic/t"
CONNECT = _encode("CONNECT", {"accept-version": "1.2", "host": "localhost"}, b"")
SUBSCRIBE = _encode("SUBSCRIBE", {"destination": TOPIC, "id": "1", "receipt": "s"}, b"")


async def test_serve_tcp_round_trip(nursery: trio.Nursery) -> None:
    runtime = BrokerRuntime()
    host, port = await nursery.start(serve_tcp, runtime, "127.0.0.1", 0)
    assert (host, port != 0) == ("127.0.0.1", True)
    async with await trio.open_tcp_stream(host, port) as stream:
        peer = Peer(stream)
        await peer.connect()
        await peer.subscribe(TOPIC)
        await peer.send("SEND", {"destination": TOPIC}, b"over tcp")
        assert (await peer.frame()).body == b"over tcp"
        await runtime.shutdown(1)
        frames = await peer.frames_until_eof()
        assert [frame.get("message") for frame in frames] == ["server shutting down"]


async def test_misbehaving_peers_do_not_stop_the_servers(nursery: trio.Nursery) -> None:
    runtime = BrokerRuntime()
    tcp = await nursery.start(serve_tcp, runtime, "127.0.0.1", 0)
    ws = await ws_server(nursery, runtime)
    for address, junk in (
        (tcp, CONNECT + b"SEND\ndestin"),
        (ws, b"GET / HTTP/1.1\r\nHo"),
        (ws, b"\x00\xff garbage\r\n\r\n"),
    ):
        stream = await trio.open_tcp_stream(*address)
        await stream.send_all(junk)
        await stream.aclose()  # gone mid-frame / mid-handshake
    async with await trio.open_tcp_stream(*tcp) as stream:
        await Peer(stream).connect()
    async with trio_websocket.open_websocket(*ws, "/ws", use_ssl=False) as connection:
        await connection.send_message(CONNECT)
        assert (await WsPeer(connection).frame()).command == "CONNECTED"


async def ws_server(
    nursery: trio.Nursery, runtime: BrokerRuntime, binary: bool = False, **options: bool
) -> tuple[str, int]:
    start = functools.partial(serve_websocket, runtime, "127.0.0.1", 0, binary=binary, **options)
    address: tuple[str, int] = await nursery.start(start)
    return address


class WsPeer:
    """A STOMP client over a trio-websocket connection: messages decoded as one byte stream."""

    def __init__(self, connection: trio_websocket.WebSocketConnection) -> None:
        self.connection = connection
        self.decoder = FrameDecoder()
        self.messages: list[str | bytes] = []

    async def frame(self) -> Frame:
        while (frame := self.decoder.next_frame()) is None:
            message = await self.connection.get_message()
            self.messages.append(message)
            self.decoder.feed(message.encode() if isinstance(message, str) else message)
        return frame


async def test_websocket_negotiates_subprotocol_and_takes_frames_in_one_message(
    nursery: trio.Nursery,
) -> None:
    runtime = BrokerRuntime()
    host, port = await ws_server(nursery, runtime)
    async with trio_websocket.open_websocket(
        host,
        port,
        "/ws?access_token=abc",
        use_ssl=False,
        subprotocols=["v10.stomp", "v11.stomp", "v12.stomp"],
    ) as ws:
        assert ws.subprotocol == "v12.stomp"
        send = _encode("SEND", {"destination": TOPIC}, b"caf\xc3\xa9")
        # CONNECT, heart-beat newlines, SUBSCRIBE and SEND in a single WebSocket message.
        await ws.send_message((CONNECT + b"\n\n" + SUBSCRIBE + send).decode())
        peer = WsPeer(ws)
        assert (await peer.frame()).command == "CONNECTED"
        assert (await peer.frame()).get("receipt-id") == "s"
        message = await peer.frame()
        assert (message.command, message.body) == ("MESSAGE", "café".encode())
        assert all(isinstance(m, str) for m in peer.messages)  # text frames by default


async def test_websocket_frame_split_across_messages(nursery: trio.Nursery) -> None:
    runtime = BrokerRuntime()
    host, port = await ws_server(nursery, runtime, binary=True)
    async with trio_websocket.open_websocket(host, port, "/ws", use_ssl=False) as ws:
        assert ws.subprotocol is None  # no subprotocol offered: still accepted
        data = (
            CONNECT
            + SUBSCRIBE
            + _encode("SEND", {"destination": TOPIC, "content-length": "7"}, b"\xff\x00split")
        )
        for offset in range(0, len(data), 7):
            await ws.send_message(data[offset : offset + 7])
        peer = WsPeer(ws)
        assert [(await peer.frame()).command for _ in range(2)] == ["CONNECTED", "RECEIPT"]
        assert (await peer.frame()).body == b"\xff\x00split"
        assert all(isinstance(m, bytes) for m in peer.messages)  # --binary


@pytest.mark.parametrize(
    ("one_frame_per_message", "shape"),
    [
        (False, [10]),  # the default: what is queued goes in one message
        (True, [1] * 10),
    ],
)
async def test_websocket_frames_per_message(
    nursery: trio.Nursery, one_frame_per_message: bool, shape: list[int]
) -> None:
    runtime = BrokerRuntime()
    host, port = await ws_server(nursery, runtime, one_frame_per_message=one_frame_per_message)
    async with trio_websocket.open_websocket(host, port, "/ws", use_ssl=False) as ws:
        await ws.send_message(CONNECT)
        [[connected]] = await frames_per_message(ws.get_message, 1)
        assert connected.command == "CONNECTED"
        await ws.send_message(receipt_burst(10))
        messages = await frames_per_message(ws.get_message, 10)
        assert list(map(len, messages)) == shape
        assert [f.get("receipt-id") for m in messages for f in m] == [f"r{n}" for n in range(10)]


async def test_python_m_stomp_one_frame_per_message() -> None:
    broker = await trio.to_thread.run_sync(start_broker, "--one-frame-per-message")
    try:
        async with trio_websocket.open_websocket_url(broker.ws_url) as ws:
            await ws.send_message(CONNECT)
            await frames_per_message(ws.get_message, 1)
            await ws.send_message(receipt_burst(10))
            messages = await frames_per_message(ws.get_message, 10)
            assert list(map(len, messages)) == [1] * 10
    finally:
        await trio.to_thread.run_sync(stop_broker, broker)


async def test_websocket_other_path_is_404(nursery: trio.Nursery) -> None:
    runtime = BrokerRuntime()
    host, port = await ws_server(nursery, runtime)
    with pytest.raises(trio_websocket.ConnectionRejected) as rejected:
        async with trio_websocket.open_websocket(host, port, "/nope", use_ssl=False):
            pass
    assert rejected.value.status_code == 404


async def test_websocket_shutdown_closes_with_1001(nursery: trio.Nursery) -> None:
    runtime = BrokerRuntime()
    host, port = await ws_server(nursery, runtime)
    async with trio_websocket.open_websocket(
        host, port, "/ws", use_ssl=False, subprotocols=["v11.stomp"]
    ) as ws:
        assert ws.subprotocol == "v11.stomp"
        await ws.send_message(CONNECT)
        peer = WsPeer(ws)
        assert (await peer.frame()).command == "CONNECTED"
        async with trio.open_nursery() as inner:
            inner.start_soon(runtime.shutdown, 2)
            error = await peer.frame()
            assert error.get("message") == "server shutting down"
            with pytest.raises(trio_websocket.ConnectionClosed):
                await ws.get_message()
        assert ws.closed is not None
        assert ws.closed.code == 1001
    assert runtime.session_count == 0


async def test_message_stream_adapter_from_two_callables() -> None:
    """The adapter chatd uses over Quart: a receive and a send callable (None = empty)."""
    incoming: list[str | bytes | None] = ["CONN", None, b"ECT\n", ""]
    sent: list[str | bytes] = []

    async def receive() -> str | bytes | None:
        if not incoming:
            raise EOFError
        return incoming.pop(0)

    async def send(message: str | bytes) -> None:
        sent.append(message)

    stream = MessageStream(receive, send, closed_errors=(EOFError,))
    assert await stream.receive_some(2) == b"CO"
    assert await stream.receive_some() == b"NN"
    assert await stream.receive_some() == b"ECT\n"
    assert await stream.receive_some() == b""
    await stream.send_all(b"MESSAGE\n\n\0")
    await stream.send_all(b"\xff")
    assert sent == ["MESSAGE\n\n\0", b"\xff"]
    await stream.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await stream.send_all(b"\n")


READY = re.compile(r"stomp broker ready tcp=(\S+):(\d+) ws=ws://(\S+):(\d+)/ws")


async def test_python_m_stomp_round_trip_and_sigterm() -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "stomp", "--tcp", "127.0.0.1:0", "--ws", "127.0.0.1:0"],
        stderr=subprocess.PIPE,
        env=env,
    )
    assert process.stderr is not None
    log = b""
    try:
        with trio.fail_after(20):
            while (ready := READY.search(log.decode())) is None:
                chunk = await process.stderr.receive_some()
                assert chunk, f"broker exited: {log.decode()}"
                log += chunk
            host, port = ready.group(1), int(ready.group(2))
            async with await trio.open_tcp_stream(host, port) as stream:
                peer = Peer(stream)
                await peer.connect()
                await peer.subscribe(TOPIC)
                await peer.send("SEND", {"destination": TOPIC, "receipt": "r"}, b"ping")
                assert (await peer.frame()).body == b"ping"
                assert (await peer.frame()).get("receipt-id") == "r"
                process.send_signal(signal.SIGTERM)
                frames = await peer.frames_until_eof()
            assert [(f.command, f.get("message")) for f in frames] == [
                ("ERROR", "server shutting down")
            ]
            async for chunk in process.stderr:
                log += chunk
            assert await process.wait() == 0, log.decode()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
