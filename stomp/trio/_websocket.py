"""STOMP over WebSocket: the server (on the lean `WebSocketStream` of `_wsstream`), and an
adapter that makes any other message-based WebSocket look like a byte stream for the pump.

STOMP over WebSocket is a byte stream cut into messages at the sender's whim: one message may
hold several frames, or a frame and heart-beat newlines, and a frame may span messages. So the
adapter concatenates incoming messages and decodes the result as a stream, and sends one message
per writer flush (or one per frame, with `one_frame_per_message`, for clients that parse exactly
one frame per message). `MessageStream` serves other WebSocket libraries (trio-websocket, Quart).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable

import trio
import trio_websocket

from ._accept import serve_tcp_sockets
from ._hooks import TransportInfo
from ._runtime import BrokerRuntime
from ._session import CLOSE_NORMAL, serve_stream
from ._tcp import peer_address
from ._wsstream import HandshakeError, accept, read_handshake, reject

log = logging.getLogger("stomp.trio")

#: The STOMP subprotocols, in our order of preference.
SUBPROTOCOLS = ("v12.stomp", "v11.stomp", "v10.stomp")

Message = str | bytes


class MessageStream:
    """A WebSocket as a stream: `receive_some`, `send_all`, `aclose`.

    Built from the connection's `receive()` and `send(message)` (and optionally
    `close(code, reason)`); `closed_errors` are what those raise once the connection is closed,
    which reads as end-of-stream (`b""`) and makes `send_all` raise `trio.BrokenResourceError`.
    A received `None` is an empty message (Hypercorn) and is skipped. Outgoing bytes go as a
    text message when they are valid UTF-8 (STOMP's NUL included) unless `binary` is set, and
    as a binary message otherwise; `close_code` is what `aclose` sends (the pump sets 1001 on a
    server shutdown). `one_frame_per_message` asks the session pump to send every frame, and
    every heart-beat newline, as a message of its own (`OneFramePerMessage`).
    """

    def __init__(
        self,
        receive: Callable[[], Awaitable[Message | None]],
        send: Callable[[Message], Awaitable[object]],
        close: Callable[[int, str], Awaitable[object]] | None = None,
        *,
        binary: bool = False,
        one_frame_per_message: bool = False,
        closed_errors: tuple[type[BaseException], ...] = (),
    ) -> None:
        self._receive = receive
        self._send = send
        self._close = close
        self.binary = binary
        self.one_frame_per_message = one_frame_per_message
        self._closed_errors = closed_errors
        self._pending = b""
        self._closed = False
        self.close_code = CLOSE_NORMAL
        self.close_reason = ""

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """The next bytes the peer sent (from one message, or its rest); b"" at the end."""
        if self._closed:
            raise trio.ClosedResourceError("the WebSocket stream was closed")
        data = self._pending
        self._pending = b""
        while not data:
            try:
                message = await self._receive()
            except self._closed_errors:
                return b""
            if message is None:
                continue
            data = message.encode() if isinstance(message, str) else bytes(message)
        if max_bytes is not None and len(data) > max_bytes:
            self._pending = data[max_bytes:]
            data = data[:max_bytes]
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send `data` as one WebSocket message."""
        if self._closed:
            raise trio.ClosedResourceError("the WebSocket stream was closed")
        payload = bytes(data)
        message: Message = payload
        if not self.binary:
            with contextlib.suppress(UnicodeDecodeError):
                message = payload.decode()
        try:
            await self._send(message)
        except self._closed_errors as exc:
            raise trio.BrokenResourceError("the WebSocket is closed") from exc

    async def aclose(self) -> None:
        """Close the WebSocket with `close_code`; idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._close is not None:
            with contextlib.suppress(*self._closed_errors):
                await self._close(self.close_code, self.close_reason)


def websocket_stream(
    connection: trio_websocket.WebSocketConnection,
    *,
    binary: bool = False,
    one_frame_per_message: bool = False,
) -> MessageStream:
    """A `MessageStream` over a trio-websocket connection."""
    return MessageStream(
        connection.get_message,
        connection.send_message,
        connection.aclose,
        binary=binary,
        one_frame_per_message=one_frame_per_message,
        closed_errors=(trio_websocket.ConnectionClosed,),
    )


def choose_subprotocol(offered: tuple[str, ...] | list[str]) -> str | None:
    """The best STOMP subprotocol the client offers (1.2 > 1.1 > 1.0), or None.

    A client that offers none is still accepted (without a subprotocol): the STOMP version is
    negotiated again by CONNECT's `accept-version`, and stompjs always offers all three anyway.
    """
    for candidate in SUBPROTOCOLS:
        if candidate in offered:
            return candidate
    return None


async def serve_websocket(
    runtime: BrokerRuntime,
    host: str | None,
    port: int,
    *,
    path: str = "/ws",
    binary: bool = False,
    one_frame_per_message: bool = False,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept STOMP over WebSocket at `ws://host:port{path}` (port 0: any free port) until
    cancelled.

    Handshakes to any other path are answered 404. The subprotocol is negotiated as in
    `choose_subprotocol`; the handshake's query string, headers and peer address reach the
    `authenticate` hook through `TransportInfo`. Outgoing frames go as text messages, or binary
    ones with `binary=True`; what is queued goes in one message, or each frame in its own with
    `one_frame_per_message`. Reports the bound `(host, port)` through `task_status.started()`.
    Raises OSError if the address cannot be bound.
    """

    async def handle(stream: trio.SocketStream) -> None:
        await serve_websocket_connection(
            runtime,
            stream,
            paths=(path,),
            binary=binary,
            one_frame_per_message=one_frame_per_message,
        )

    await serve_tcp_sockets(
        handle, host, port, what=f"stomp websocket ({path})", task_status=task_status
    )


async def serve_websocket_connection(
    runtime: BrokerRuntime,
    stream: trio.SocketStream,
    *,
    paths: tuple[str, ...] = ("/ws",),
    initial: bytes = b"",
    binary: bool = False,
    one_frame_per_message: bool = False,
    transport: str = "websocket",
    on_open: Callable[[TransportInfo], object] | None = None,
) -> None:
    """Run one STOMP-over-WebSocket connection on an accepted socket: the handshake (after
    `initial`, bytes already read from it), then the session, then the close.

    A handshake to a path not in `paths` is answered 404; a malformed one 400. `binary` and
    `one_frame_per_message` are as in `serve_websocket`. `on_open` is
    called with the session's `TransportInfo` once the WebSocket is open (an application's
    per-connection set-up, e.g. its request id). Never raises for anything the peer does.
    """
    try:
        with trio.fail_after(runtime.connect_timeout):
            ws, handshake = await read_handshake(stream, initial)
            if handshake.path not in paths:
                await reject(stream, ws, 404, b"not found")
                await stream.aclose()
                return
            subprotocol = choose_subprotocol(handshake.subprotocols)
            websocket = await accept(
                stream, ws, subprotocol, binary=binary, one_frame_per_message=one_frame_per_message
            )
    except (
        HandshakeError,
        trio.TooSlowError,
        trio.BrokenResourceError,
        trio.ClosedResourceError,
        OSError,
    ) as exc:
        log.debug("websocket handshake failed: %r", exc)
        with contextlib.suppress(Exception):
            await stream.aclose()
        return
    info = TransportInfo(
        transport,
        remote=peer_address(stream),
        path=handshake.path,
        query_string=handshake.query_string,
        headers=handshake.headers,
        subprotocol=subprotocol,
    )
    if on_open is not None:
        on_open(info)
    await serve_stream(runtime, websocket, info)
