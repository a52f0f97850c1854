"""The server side of one STOMP connection, sans-IO.

`receive_data(bytes)` returns validated events; the connection negotiates the version and the
heart-beats, checks each frame's required headers for the negotiated version, and enforces the
state machine below. Every rule about which frame may come when lives in `_ALLOWED`.
"""

from __future__ import annotations

import enum
from typing import Any

from ._codec import FrameDecoder
from ._errors import RemoteProtocolError
from ._events import (
    Abort,
    Ack,
    AckMode,
    Begin,
    ClientEvent,
    Commit,
    Connect,
    Disconnect,
    Nack,
    Send,
    Subscribe,
    Unsubscribe,
    Violation,
)
from ._frames import (
    ACCEPT_VERSION,
    ACK,
    DESTINATION,
    HEART_BEAT,
    HOST,
    ID,
    LOGIN,
    MESSAGE_ID,
    PASSCODE,
    RECEIPT,
    SUBSCRIPTION,
    TRANSACTION,
    Command,
    Frame,
)

SUPPORTED_VERSIONS = ("1.0", "1.1", "1.2")
#: The server's heart-beat limit, in ms: it never sends, nor asks for, beats faster than this
#: (send, expect); a client asking for slower beats gets what it asks for. 0 turns a direction
#: off. One second is RabbitMQ's floor too.
DEFAULT_HEARTBEAT = (1_000, 1_000)


class State(enum.Enum):
    AWAITING_CONNECT = "awaiting-connect"
    CONNECTED = "connected"
    CLOSED = "closed"


_CLIENT_FRAMES = frozenset(Command) - {
    Command.CONNECT,
    Command.STOMP,
    Command.CONNECTED,
    Command.MESSAGE,
    Command.RECEIPT,
    Command.ERROR,
}
#: Which commands each state accepts, and the state that follows. Every rule lives here.
_ALLOWED: dict[State, dict[Command, State]] = {
    State.AWAITING_CONNECT: {Command.CONNECT: State.CONNECTED, Command.STOMP: State.CONNECTED},
    State.CONNECTED: {
        **{command: State.CONNECTED for command in _CLIENT_FRAMES},
        Command.DISCONNECT: State.CLOSED,
    },
    State.CLOSED: {},
}
#: Only SEND carries a body from a client; CONNECT bodies are ignored, as most brokers do.
_BODY_ALLOWED = frozenset({Command.SEND, Command.CONNECT, Command.STOMP})


def negotiate_heartbeat(client: tuple[int, int], server: tuple[int, int]) -> tuple[int, int]:
    """(server sends every N ms, server expects every N ms) for a CONNECT's `client` heart-beat
    (client sends, client wants) under the server's limit `server` (send, expect); 0 = off.

    STOMP 1.2's rule, which RabbitMQ follows with a one-second limit: each direction runs at the
    slower of what its sender can do and what its receiver wants, so a client is honoured down
    to the server's limit and is never beaten faster than it asked; 0 on either side is none.
    """
    client_sends, client_wants = client
    server_sends, server_wants = server
    send = max(server_sends, client_wants) if server_sends and client_wants else 0
    expect = max(client_sends, server_wants) if client_sends and server_wants else 0
    return send, expect


class ServerConnection:
    """Protocol state of one client connection; feed it bytes, get events back."""

    def __init__(
        self,
        *,
        heartbeat: tuple[int, int] = DEFAULT_HEARTBEAT,
        versions: tuple[str, ...] = SUPPORTED_VERSIONS,
        **decoder_limits: Any,
    ) -> None:
        self.state = State.AWAITING_CONNECT
        self.version: str | None = None
        #: Negotiated intervals in ms, set by CONNECT: how often we send, how often we expect.
        self.heartbeat = (0, 0)
        self._server_heartbeat = heartbeat
        self._versions = versions
        self._decoder = FrameDecoder(**decoder_limits)

    def receive_data(self, data: bytes | bytearray) -> list[ClientEvent | Violation]:
        """Decode `data`; a `Violation`, if any, is the last event and closes the connection."""
        if self.closed:
            return []
        events: list[ClientEvent | Violation] = []
        try:
            self._decoder.feed(data)
            while (frame := self._decoder.next_frame()) is not None:
                events.append(self._to_event(frame))
                if self.closed:  # after DISCONNECT or a violation nothing more is read
                    break
        except RemoteProtocolError as exc:
            events.append(self._fail(exc.message, exc.detail))
        return events

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    def _fail(
        self,
        message: str,
        detail: str = "",
        receipt: str | None = None,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> Violation:
        self.state = State.CLOSED
        return Violation(message, detail, receipt, headers)

    def _to_event(self, frame: Frame) -> ClientEvent | Violation:
        receipt = frame.get(RECEIPT)
        following = _ALLOWED[self.state].get(frame.command)
        if following is None:
            if self.state is State.AWAITING_CONNECT:
                return self._fail("not connected", f"expected CONNECT, got {frame.command}")
            return self._fail("unexpected frame", f"{frame.command} is not allowed here", receipt)
        if frame.body and frame.command not in _BODY_ALLOWED:
            return self._fail("unexpected body", f"{frame.command} frames have no body", receipt)
        try:
            event = self._build(frame)
        except _VersionError as exc:
            return self._fail(exc.message, exc.detail, None, (("version", exc.supported),))
        except RemoteProtocolError as exc:
            return self._fail(exc.message, exc.detail, receipt)
        self.state = following
        return event

    def _build(self, frame: Frame) -> ClientEvent:
        command = frame.command
        if command in (Command.CONNECT, Command.STOMP):
            return self._connect(frame)
        if command is Command.SEND:
            return Send(frame, _required(frame, DESTINATION), frame.get(TRANSACTION))
        if command is Command.SUBSCRIBE:
            destination = _required(frame, DESTINATION)
            sub_id = frame.get(ID) if self.version != "1.0" else frame.get(ID, destination)
            if sub_id is None:
                raise RemoteProtocolError("missing header", "SUBSCRIBE requires 'id'")
            ack = frame.get(ACK, AckMode.AUTO.value)
            try:
                mode = AckMode(ack)
            except ValueError:
                raise RemoteProtocolError("invalid ack mode", f"unknown ack mode {ack!r}") from None
            return Subscribe(frame, sub_id, destination, mode)
        if command is Command.UNSUBSCRIBE:
            sub_id = frame.get(ID)
            if sub_id is None and self.version == "1.0":
                sub_id = frame.get(DESTINATION)
            if sub_id is None:
                raise RemoteProtocolError("missing header", "UNSUBSCRIBE requires 'id'")
            return Unsubscribe(frame, sub_id)
        if command in (Command.ACK, Command.NACK):
            if self.version == "1.2":
                ack_id = _required(frame, ID)
            else:  # STOMP 1.0 has no NACK, but takes 1.1's, as RabbitMQ and ActiveMQ do
                ack_id = _required(frame, MESSAGE_ID)
                if self.version == "1.1":
                    _required(frame, SUBSCRIPTION)
            kind = Ack if command is Command.ACK else Nack
            return kind(frame, ack_id, frame.get(TRANSACTION))
        if command in (Command.BEGIN, Command.COMMIT, Command.ABORT):
            transaction = _required(frame, TRANSACTION)
            if command is Command.BEGIN:
                return Begin(frame, transaction)
            return (Commit if command is Command.COMMIT else Abort)(frame, transaction)
        assert command is Command.DISCONNECT
        return Disconnect(frame)

    def _connect(self, frame: Frame) -> Connect:
        offered = [v.strip() for v in frame.get(ACCEPT_VERSION, "1.0").split(",")]
        common = [v for v in self._versions if v in offered]
        if not common:
            supported = ",".join(self._versions)
            raise _VersionError(supported)
        version = common[-1]
        heartbeat = (0, 0)
        if version != "1.0":
            heartbeat = negotiate_heartbeat(
                _parse_heartbeat(frame.get(HEART_BEAT, "0,0")), self._server_heartbeat
            )
        self.version = version
        self.heartbeat = heartbeat
        self._decoder.escaping = version != "1.0"
        return Connect(
            frame, version, frame.get(HOST), frame.get(LOGIN), frame.get(PASSCODE), heartbeat
        )


class _VersionError(RemoteProtocolError):
    def __init__(self, supported: str) -> None:
        super().__init__(
            "unsupported STOMP version",
            f"Supported protocol versions are {supported.replace(',', ' ')}",
        )
        self.supported = supported


def _required(frame: Frame, name: str) -> str:
    value = frame.get(name)
    if value is None or value == "":
        raise RemoteProtocolError("missing header", f"{frame.command} requires '{name}'")
    return value


def _parse_heartbeat(value: str) -> tuple[int, int]:
    parts = value.split(",")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise RemoteProtocolError("invalid heart-beat", f"heart-beat must be 'x,y', got {value!r}")
    return int(parts[0]), int(parts[1])
