"""Pair a client with a broker without sockets: for tests and for trying the broker out.

`Loopback` owns one `Broker`; each `LoopbackClient` is a `ServerConnection` plus a client-side
decoder. `send(frame)` feeds the encoded frame through the server side and returns nothing;
the frames the broker wrote to each client are collected in `client.received`.
"""

from __future__ import annotations

import itertools

from ._codec import FrameDecoder, encode_frame
from ._connection import ServerConnection
from ._events import Connect
from ._frames import Command, Frame
from .broker import Action, Broker, Close, DestinationActive, Write


class LoopbackClient:
    def __init__(self, loopback: Loopback, session: str, principal: str | None) -> None:
        self.loopback = loopback
        self.session = session
        self.principal = principal
        self.connection = ServerConnection()
        self.received: list[Frame] = []
        self.closed = False
        self._decoder = FrameDecoder(max_frame_size=1 << 30, max_body_size=1 << 30)

    def send(
        self, command: Command | str, headers: dict[str, str] | None = None, body: bytes = b""
    ) -> None:
        """Encode a frame as a client would and push it through the server connection."""
        frame = Frame(Command(command), tuple((headers or {}).items()), body)
        self.send_bytes(encode_frame(frame))

    def send_bytes(self, data: bytes) -> None:
        broker = self.loopback.broker
        for event in self.connection.receive_data(data):
            if isinstance(event, Connect):
                actions = broker.connect(self.session, event, self.principal)
            else:
                actions = broker.handle(self.session, event)
            self.loopback.apply(actions)

    def take(self) -> list[Frame]:
        """Frames received since the last call."""
        frames, self.received = self.received, []
        return frames

    def _feed(self, data: bytes) -> None:
        self._decoder.feed(data)
        while (frame := self._decoder.next_frame()) is not None:
            self.received.append(frame)


class Loopback:
    def __init__(self, broker: Broker | None = None) -> None:
        self.broker = broker or Broker()
        self.clients: dict[str, LoopbackClient] = {}
        self.active: dict[str, bool] = {}
        self._sessions = itertools.count(1)

    def client(
        self, principal: str | None = None, *, connect: bool = True, version: str = "1.2"
    ) -> LoopbackClient:
        session = f"s{next(self._sessions)}"
        client = self.clients[session] = LoopbackClient(self, session, principal)
        if connect:
            client.send(Command.CONNECT, {"accept-version": version, "host": "localhost"})
            connected = client.take()
            if not connected or connected[0].command is not Command.CONNECTED:
                raise AssertionError(f"CONNECT was answered with {connected}")
        return client

    def drop(self, client: LoopbackClient) -> None:
        """The client's transport vanished (no DISCONNECT)."""
        client.closed = True
        self.apply(self.broker.disconnect(client.session))

    def apply(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Write):
                client = self.clients[action.session]
                if not client.closed:
                    client._feed(action.data + action.tail)
            elif isinstance(action, Close):
                client = self.clients[action.session]
                client.closed = True
                self.broker.disconnect(action.session)
            elif isinstance(action, DestinationActive):
                self.active[action.destination] = action.active
