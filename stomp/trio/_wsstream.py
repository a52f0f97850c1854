"""A lean server WebSocket (RFC 6455) straight on a trio stream: the STOMP hot path.

trio-websocket (and Hypercorn + Quart behind chatd's ``/ws``) hand every message through memory
channels, locks and event objects: measured, that was most of what a MESSAGE frame cost over
WebSocket (62 k deliveries/s against 311 k over raw TCP with the same broker core). Here one
`WebSocketStream` *is* the byte stream the session pump reads and writes:

- the opening handshake, incoming frames (unmasking, UTF-8 checks, fragments, limits) and the
  control frames (ping/pong, close) are wsproto's, so the parsing a peer can attack is the
  well-tested one;
- outgoing data frames, the hot path, are encoded here in one step: a header of 2-10 bytes
  and the payload, one socket write per flush of the session's writer. Server frames are
  never masked, so there is nothing more to it (RFC 6455 §5.2).

STOMP over WebSocket is a byte stream cut into messages at the sender's whim, so message
boundaries do not matter on the way in: `receive_some` returns each data frame's payload as
it arrives. Outgoing bytes go as a text message when they are valid UTF-8 (as STOMP frames
with text bodies are), else as a binary one.
"""

from __future__ import annotations

import contextlib
import struct
from collections import deque
from dataclasses import dataclass
from typing import Final

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import RemoteProtocolError

from ._session import CLOSE_NORMAL

#: Bytes asked of the socket per read.
RECEIVE_SIZE: Final = 64 * 1024
#: The largest handshake request head accepted (browsers send 1-2 KiB).
MAX_HANDSHAKE_SIZE: Final = 16 * 1024
#: Seconds `aclose` waits for the peer's close frame after sending ours.
CLOSE_REPLY_TIMEOUT: Final = 1.0
_OP_TEXT: Final = 0x1
_OP_BINARY: Final = 0x2
#: Data may go out until our close frame has: also after the peer's, while what it sent before
#: is answered (RFC 6455 §5.5.1 lets the reply wait for the current message).
_SENDING_STATES: Final = (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING)


class HandshakeError(Exception):
    """The peer's opening handshake was malformed, too large, or never completed."""


def frame_header(opcode: int, length: int) -> bytes:
    """The header of a final, unmasked frame carrying `length` payload bytes."""
    if length < 126:
        return bytes((0x80 | opcode, length))
    if length < 65536:
        return struct.pack("!BBH", 0x80 | opcode, 126, length)
    return struct.pack("!BBQ", 0x80 | opcode, 127, length)


def _is_text(payload: bytes) -> bool:
    if payload.isascii():  # the common case, checked in C without decoding
        return True
    try:
        payload.decode()
    except UnicodeDecodeError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class Handshake:
    """The opening request, as the application needs it: path, query and headers."""

    path: str
    query_string: str
    #: Header names lower-cased, values as sent (latin-1).
    headers: tuple[tuple[str, str], ...]
    subprotocols: tuple[str, ...]


async def read_handshake(
    stream: trio.abc.Stream,
    initial: bytes = b"",
) -> tuple[WSConnection, Handshake]:
    """Read the opening request from `stream` (after `initial`, bytes already read from it).

    Returns the wsproto connection, ready for `accept` or `reject`. Raises HandshakeError for
    anything that is not a complete, valid WebSocket upgrade within `MAX_HANDSHAKE_SIZE` (the
    peer has then been answered 400 where that was possible); the caller bounds the time.
    """
    ws = WSConnection(ConnectionType.SERVER)
    data = initial
    size = 0
    while True:
        if data:
            size += len(data)
            if size > MAX_HANDSHAKE_SIZE:
                raise HandshakeError("handshake request too large")
            try:
                ws.receive_data(data)
                for event in ws.events():
                    if isinstance(event, Request):
                        return ws, _handshake(event)
            except RemoteProtocolError as exc:
                await _answer_refusal(stream, ws, exc.event_hint)
                raise HandshakeError(str(exc)) from None
        data = bytes(await stream.receive_some(RECEIVE_SIZE))
        if not data:
            raise HandshakeError("the peer closed during the handshake")


def _handshake(request: Request) -> Handshake:
    path, _, query = request.target.partition("?")
    headers = [("host", request.host)]
    headers += [
        (bytes(name).decode("latin-1").lower(), bytes(value).decode("latin-1"))
        for name, value in request.extra_headers
    ]
    return Handshake(path, query, tuple(headers), tuple(request.subprotocols))


async def _answer_refusal(stream: trio.abc.Stream, ws: WSConnection, hint: object) -> None:
    if not isinstance(hint, RejectConnection):
        return
    with contextlib.suppress(
        trio.BrokenResourceError, trio.ClosedResourceError, RemoteProtocolError, OSError
    ):
        await stream.send_all(ws.send(hint))


async def reject(stream: trio.abc.Stream, ws: WSConnection, status: int, body: bytes) -> None:
    """Answer the handshake with an HTTP error (`status`, plain-text `body`)."""
    data = ws.send(
        RejectConnection(
            status_code=status,
            headers=[
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
            ],
            has_body=True,
        )
    )
    data += ws.send(RejectData(data=body, body_finished=True))
    await stream.send_all(data)


async def accept(
    stream: trio.abc.Stream,
    ws: WSConnection,
    subprotocol: str | None,
    *,
    binary: bool = False,
    one_frame_per_message: bool = False,
) -> WebSocketStream:
    """Accept the handshake read by `read_handshake`; the connection as a byte stream."""
    await stream.send_all(ws.send(AcceptConnection(subprotocol=subprotocol)))
    return WebSocketStream(stream, ws, binary=binary, one_frame_per_message=one_frame_per_message)


class WebSocketStream:
    """An open server WebSocket as a byte stream: `receive_some`, `send_all`, `aclose`.

    One task may read while another writes (the session pump's reader and writer). Control
    frames the reader owes (a pong, the close reply) are written by the reader when no write
    is under way, else by the writer right after its data frame: never interleaved with one.
    `close_code` and `close_reason` are what `aclose` sends (the pump sets 1001 on shutdown);
    `one_frame_per_message` asks the pump for one `send_all` per frame (`OneFramePerMessage`).
    `receive_message` and `send_message` keep message boundaries instead (an echo app's needs).
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        ws: WSConnection,
        *,
        binary: bool = False,
        one_frame_per_message: bool = False,
    ) -> None:
        self._stream = stream
        self._ws = ws
        self.binary = binary
        self.one_frame_per_message = one_frame_per_message
        self.close_code = CLOSE_NORMAL
        self.close_reason = ""
        self._sending = False
        self._idle = trio.lowlevel.ParkingLot()  # writers waiting for the reader's control write
        self._control: list[bytes] = []
        #: Pieces of data frames received and not yet returned, in order.
        self._data: deque[TextMessage | BytesMessage] = deque()
        #: The peer's close (or wsproto's verdict on a frame it could not parse), answered only
        #: once the data that came before it was returned: replies to it may still go out.
        self._close: CloseConnection | None = None
        self._peer_closed = False
        #: We failed the connection (RFC 6455 §7.1.7): wsproto parses nothing after that.
        self._failed = False
        self._closed = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """The next payload bytes of the peer's data frames; b"" once it closed (only then: an
        empty message is skipped)."""
        data = self._data
        while True:
            if not data and not await self._receive():
                return b""
            if len(data) == 1:
                received = _payload(data.popleft())
            else:
                received = b"".join([_payload(piece) for piece in data])
                data.clear()
            if received:
                return received

    async def receive_message(self) -> tuple[bytes, bool] | None:
        """The peer's next complete message as `(payload, is_text)`; None once it closed.

        Fragments are joined, without a size limit: meant for echo apps and tests, the STOMP
        hot path uses `receive_some`.
        """
        data = self._data
        pieces: list[TextMessage | BytesMessage] = []
        while True:
            if not data and not await self._receive():
                return None
            piece = data.popleft()
            pieces.append(piece)
            if piece.message_finished:
                break
        is_text = isinstance(pieces[0], TextMessage)
        return b"".join(_payload(piece) for piece in pieces), is_text

    async def _receive(self) -> bool:
        """Read until some data-frame payload is queued in `_data`; False once the peer closed
        (its close answered) or failed. Pings are answered on the way."""
        ws = self._ws
        while not self._data:
            if self._close is not None:
                await self._answer_close(self._close)
                return False
            if self._peer_closed or self._failed or ws.state is ConnectionState.CLOSED:
                return False
            try:
                received = await self._stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, OSError):
                received = b""
            if not received:
                self._peer_closed = True
                return False
            ws.receive_data(bytes(received))
            for event in ws.events():
                if isinstance(event, (TextMessage, BytesMessage)):
                    self._data.append(event)
                elif isinstance(event, Ping):
                    if ws.state is ConnectionState.OPEN:
                        self._control.append(ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    self._close = event  # the last event: wsproto parses nothing after it
            if self._control and not self._sending:
                await self._send_control()
        return True

    async def _answer_close(self, event: CloseConnection) -> None:
        self._close = None
        ws = self._ws
        if ws.state is ConnectionState.REMOTE_CLOSING:
            self._peer_closed = True
            self._control.append(ws.send(event.response()))  # echoes the peer's code
        elif ws.state is ConnectionState.OPEN:
            # A frame wsproto could not parse; it chose the code (1002, 1007 for bad UTF-8)
            # and says what was wrong in the reason.
            self._failed = True
            self._control.append(ws.send(CloseConnection(code=event.code, reason=event.reason)))
        if self._control and not self._sending:
            await self._send_control()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send `data` as one WebSocket message (a single frame): text if it is valid UTF-8
        and `binary` is not set."""
        payload = bytes(data)
        await self._send_frame(
            _OP_BINARY if self.binary or not _is_text(payload) else _OP_TEXT, payload
        )

    async def send_message(self, data: bytes, *, text: bool) -> None:
        """Send `data` as one text (`text=True`, `data` then UTF-8) or binary message."""
        await self._send_frame(_OP_TEXT if text else _OP_BINARY, data)

    async def _send_frame(self, opcode: int, payload: bytes) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the WebSocket stream was closed")
        while self._sending:  # rare: the reader is writing a control frame
            await self._idle.park()
        if self._ws.state not in _SENDING_STATES:
            raise trio.BrokenResourceError("the WebSocket is closing")
        self._sending = True
        try:
            await self._stream.send_all(frame_header(opcode, len(payload)) + payload)
            while self._control:
                await self._stream.send_all(self._control.pop(0))
        finally:
            self._sending = False
            self._idle.unpark_all()

    async def _send_control(self) -> None:
        self._sending = True
        try:
            while self._control:
                await self._stream.send_all(self._control.pop(0))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self._control.clear()
            self._peer_closed = True
        finally:
            self._sending = False
            self._idle.unpark_all()

    async def aclose(self) -> None:
        """Send the close frame (`close_code`, or the reply to the peer's) if still owed, wait
        briefly for the peer's reply to ours, and close the socket; idempotent. The caller
        bounds the time (the pump does)."""
        if self._closed:
            return
        self._closed = True
        ws = self._ws
        try:
            if self._close is not None:  # the reader stopped before it answered the peer's close
                await self._answer_close(self._close)
            elif ws.state is ConnectionState.OPEN:
                self._control.append(
                    ws.send(CloseConnection(code=self.close_code, reason=self.close_reason or None))
                )
            if self._control and not self._sending:
                await self._send_control()
            with trio.move_on_after(CLOSE_REPLY_TIMEOUT):
                if self._failed:
                    await self._drain()
                while ws.state is ConnectionState.LOCAL_CLOSING and not self._peer_closed:
                    data = await self._stream.receive_some(RECEIVE_SIZE)
                    if not data:
                        break
                    ws.receive_data(bytes(data))
                    for _ in ws.events():
                        pass  # data after our close is dropped; the reply moves to CLOSED
        except (trio.BrokenResourceError, trio.ClosedResourceError, RemoteProtocolError, OSError):
            pass
        finally:
            await self._stream.aclose()

    async def _drain(self) -> None:
        """After failing the connection: half-close, then read what the peer still sends until
        it closes too. Closing with unread bytes would reset the connection, and a reset can
        destroy our close frame before the peer reads it."""
        stream = self._stream
        if isinstance(stream, trio.abc.HalfCloseableStream):
            await stream.send_eof()
        while not self._peer_closed and await stream.receive_some(RECEIVE_SIZE):
            pass
        self._peer_closed = True


def _payload(piece: TextMessage | BytesMessage) -> bytes:
    return piece.data.encode() if isinstance(piece, TextMessage) else bytes(piece.data)
