"""The lean WebSocket transport (`stomp.trio._wsstream`) against a raw client, frame by frame.

Two servers on the same transport: the echo app `scripts/autobahn` runs the Autobahn
fuzzingclient against (`receive_message`/`send_message`), and a stream echo that reads and
writes the way the STOMP session does (`receive_some`/`send_all`). The regression cases are the
faults the fuzzingclient found; each names its Autobahn cases.
"""

from __future__ import annotations

import contextlib
import functools
import struct
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from stomp.trio import BrokerRuntime, serve_websocket
from stomp.trio._wsstream import accept, read_handshake

from .stomp_peer import _encode
from .ws_echo import echo
from .ws_peer import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    RawWsClient,
    close_frame,
    frame,
)

CLOSE_NORMAL = 1000
PROTOCOL_ERROR = 1002
INVALID_PAYLOAD = 1007


async def stream_echo(stream: trio.abc.Stream) -> None:
    """Echo what `receive_some` returns with `send_all`: the STOMP session's use of the stream."""
    ws, _ = await read_handshake(stream)
    websocket = await accept(stream, ws, None)
    try:
        while data := await websocket.receive_some():
            await websocket.send_all(data)
    finally:
        await websocket.aclose()


Handler = Callable[[trio.SocketStream], Awaitable[None]]


async def connect(nursery: trio.Nursery, handler: Handler) -> RawWsClient:
    listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    peer = RawWsClient(await trio.open_tcp_stream("127.0.0.1", port))
    await peer.handshake()
    return peer


async def assert_closed_with(peer: RawWsClient, code: int) -> None:
    """The server's next frame is a close with `code`, and then it closes the connection."""
    received = await peer.frame()
    assert (received.opcode, received.close_code) == (OP_CLOSE, code), received
    assert await peer.eof()


# -- messages ---------------------------------------------------------------------------------


async def test_echo_keeps_text_text_and_binary_binary(nursery: trio.Nursery) -> None:
    peer = await connect(nursery, echo)
    await peer.send(frame(OP_TEXT, "κόσμε".encode()), frame(OP_BINARY, b"\xff\x00"), frame(OP_TEXT))
    received = [await peer.frame() for _ in range(3)]
    assert [(r.opcode, r.fin, r.payload) for r in received] == [
        (OP_TEXT, True, "κόσμε".encode()),
        (OP_BINARY, True, b"\xff\x00"),
        (OP_TEXT, True, b""),
    ]


async def test_fragments_come_back_as_one_message_after_the_pong_between_them(
    nursery: trio.Nursery,
) -> None:
    peer = await connect(nursery, echo)
    await peer.send(
        frame(OP_TEXT, b"he", fin=False),
        frame(OP_PING, b"mid"),
        frame(OP_CONTINUATION, b"ll", fin=False),
        frame(OP_CONTINUATION, b"o"),
    )
    pong, message = await peer.frame(), await peer.frame()
    assert (pong.opcode, pong.payload) == (OP_PONG, b"mid")
    assert (message.opcode, message.fin, message.payload) == (OP_TEXT, True, b"hello")


async def test_fragments_reach_the_stream_joined(nursery: trio.Nursery) -> None:
    peer = await connect(nursery, stream_echo)
    await peer.send(
        frame(OP_TEXT, b"SEND\n", fin=False),
        frame(OP_CONTINUATION, b"destination:/t", fin=False),
        frame(OP_CONTINUATION, b"\n\nbody\0"),
    )
    received = await peer.frame()
    assert (received.opcode, received.payload) == (OP_TEXT, b"SEND\ndestination:/t\n\nbody\0")


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 100_000])
async def test_server_frames_use_the_shortest_length_header(
    nursery: trio.Nursery, size: int
) -> None:
    peer = await connect(nursery, echo)
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    await peer.send(frame(OP_BINARY, payload))
    received = await peer.frame()
    if size < 126:
        expected = bytes((0x82, size))
    elif size < 65536:
        expected = struct.pack("!BBH", 0x82, 126, size)
    else:
        expected = struct.pack("!BBQ", 0x82, 127, size)
    assert (received.header, received.payload) == (expected, payload)


# -- control frames and the closing handshake -------------------------------------------------


@pytest.mark.parametrize("handler", [echo, stream_echo])
async def test_ping_is_answered_with_its_payload(nursery: trio.Nursery, handler: Handler) -> None:
    peer = await connect(nursery, handler)
    payload = bytes(range(125))  # the most a control frame carries
    await peer.send(frame(OP_PING, payload))
    received = await peer.frame()
    assert (received.opcode, received.payload) == (OP_PONG, payload)


@pytest.mark.parametrize("handler", [echo, stream_echo])
async def test_close_code_and_reason_are_echoed(nursery: trio.Nursery, handler: Handler) -> None:
    peer = await connect(nursery, handler)
    await peer.send(close_frame(3001, b"bye"))
    received = await peer.frame()
    assert (received.opcode, received.payload) == (OP_CLOSE, struct.pack("!H", 3001) + b"bye")
    assert await peer.eof()  # the server closes the TCP connection first (RFC 6455 §7.1.1)


@pytest.mark.parametrize("handler", [echo, stream_echo])
async def test_invalid_utf8_text_closes_with_1007(nursery: trio.Nursery, handler: Handler) -> None:
    peer = await connect(nursery, handler)
    await peer.send(frame(OP_TEXT, "κόσμε".encode() + b"\xed\xa0\x80"))  # a UTF-16 surrogate
    await assert_closed_with(peer, INVALID_PAYLOAD)


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(frame(OP_TEXT, b"x", rsv=2), id="reserved-bit"),
        pytest.param(frame(0x3, b"x"), id="reserved-data-opcode"),
        pytest.param(frame(0xB), id="reserved-control-opcode"),
        pytest.param(frame(OP_PING, b"x", fin=False), id="fragmented-ping"),
        pytest.param(frame(OP_PING, bytes(126)), id="oversized-ping"),
        pytest.param(b"\x82\xff" + struct.pack("!Q", 1 << 63) + bytes(4), id="length-msb-set"),
        pytest.param(frame(OP_CONTINUATION, b"x"), id="continuation-of-nothing"),
        pytest.param(frame(OP_TEXT, fin=False) + frame(OP_TEXT, b"b"), id="text-inside-text"),
        pytest.param(frame(OP_TEXT, b"x", masked=False), id="unmasked"),
        pytest.param(frame(OP_CLOSE, b"\x03"), id="close-one-byte"),
        pytest.param(close_frame(999), id="close-code-999"),
        pytest.param(close_frame(1005), id="close-code-local-only"),
    ],
)
@pytest.mark.parametrize("handler", [echo, stream_echo])
async def test_protocol_errors_close_with_1002(
    nursery: trio.Nursery, handler: Handler, bad: bytes
) -> None:
    peer = await connect(nursery, handler)
    await peer.send(bad)
    await assert_closed_with(peer, PROTOCOL_ERROR)


# -- regressions found by the Autobahn fuzzingclient ------------------------------------------


@pytest.mark.parametrize("handler", [echo, stream_echo])
async def test_message_before_a_bad_frame_is_answered_before_the_close(
    nursery: trio.Nursery, handler: Handler
) -> None:
    """Autobahn 3.2, 3.3, 4.1.3, 4.1.4, 4.2.3, 4.2.4, 5.15: the close went out first, and the
    reply to the message (for STOMP: a RECEIPT, an ERROR) was lost."""
    peer = await connect(nursery, handler)
    await peer.send(frame(OP_TEXT, b"hello"), frame(OP_TEXT, b"x", rsv=2), frame(OP_PING))
    received = await peer.frame()
    assert (received.opcode, received.payload) == (OP_TEXT, b"hello")
    await assert_closed_with(peer, PROTOCOL_ERROR)  # and no pong


@pytest.mark.parametrize("handler", [echo, stream_echo])
async def test_messages_before_the_peer_close_are_answered_before_the_reply(
    nursery: trio.Nursery, handler: Handler
) -> None:
    """Autobahn 7.1.6: the close was answered first; then data could no longer be sent."""
    peer = await connect(nursery, handler)
    big = b"BAsd7&jh23" * 26 * 1024

    # sent while we read: the stream echo writes back as it reads, so a peer that only reads
    # once it has sent 260 KiB could fill both directions' socket buffers and wait for ever
    async def send() -> None:
        with contextlib.suppress(trio.BrokenResourceError):  # the ping may meet the close
            await peer.send(
                frame(OP_TEXT, big),
                frame(OP_TEXT, b"Hello World!"),
                close_frame(CLOSE_NORMAL),
                frame(OP_PING),
            )

    nursery.start_soon(send)
    data = b""
    while (received := await peer.frame()).opcode != OP_CLOSE:
        data += received.payload  # the stream echo cuts where its reads ended
    assert data == big + b"Hello World!"
    assert received.close_code == CLOSE_NORMAL
    assert await peer.eof()


async def test_failed_connection_is_closed_without_waiting_for_the_reply(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """Autobahn 3.*, 4.*, 5.*, 6.*, 7.* "FAILED BY CLIENT": after failing the connection the
    server waited `CLOSE_REPLY_TIMEOUT` for a close reply wsproto no longer parses, so the
    client had to drop the connection. Now it half-closes at once and drains."""
    client, server = trio.testing.memory_stream_pair()
    nursery.start_soon(stream_echo, server)
    peer = RawWsClient(client)
    await peer.handshake()
    start = trio.current_time()
    await peer.send(frame(OP_TEXT, b"x", rsv=1))
    received = await peer.frame()
    assert received.close_code == PROTOCOL_ERROR
    await peer.send(close_frame(PROTOCOL_ERROR))  # the client's reply, as RFC 6455 asks
    assert await peer.eof()
    assert trio.current_time() == start


async def test_empty_message_does_not_end_the_stream(nursery: trio.Nursery) -> None:
    """Autobahn 1.1.1, 1.2.1, 6.1.1: `receive_some` returned b"" for an empty message, which
    reads as end-of-stream: the STOMP session closed."""
    peer = await connect(nursery, stream_echo)
    await peer.send(frame(OP_TEXT), frame(OP_PING, b"p"))  # the pong: the server read both
    assert (await peer.frame()).opcode == OP_PONG
    await peer.send(frame(OP_TEXT, b"\n"))
    received = await peer.frame()
    assert (received.opcode, received.payload) == (OP_TEXT, b"\n")


async def test_stomp_receipt_for_a_disconnect_sent_with_the_close_frame_arrives(
    nursery: trio.Nursery,
) -> None:
    """The STOMP session on this transport: the reply to the peer's close used to go out first,
    and the RECEIPT it waited for was lost. The session stops reading after DISCONNECT, so
    `aclose` answers the close it left pending."""
    runtime = BrokerRuntime()
    host, port = await nursery.start(functools.partial(serve_websocket, runtime, "127.0.0.1", 0))
    peer = RawWsClient(await trio.open_tcp_stream(host, port))
    await peer.handshake("/ws")
    await peer.send(frame(OP_TEXT, _encode("CONNECT", {"accept-version": "1.2"}, b"")))
    assert (await peer.frame()).payload.startswith(b"CONNECTED\n")
    await peer.send(
        frame(OP_TEXT, _encode("DISCONNECT", {"receipt": "bye"}, b"")), close_frame(CLOSE_NORMAL)
    )
    assert (await peer.frame()).payload == _encode("RECEIPT", {"receipt-id": "bye"}, b"")
    await assert_closed_with(peer, CLOSE_NORMAL)
