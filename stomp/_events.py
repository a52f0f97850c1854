"""Events: what a client frame means once the connection has validated it.

Every event keeps its `frame`, so custom headers (`reply-to`, application headers) reach the
broker untouched. `Violation` is the one event that is not a frame: the peer broke the protocol
and the session must answer with an ERROR frame and close.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from ._frames import RECEIPT, Frame, Headers


class AckMode(StrEnum):
    AUTO = "auto"
    CLIENT = "client"
    CLIENT_INDIVIDUAL = "client-individual"


@dataclass(frozen=True, slots=True)
class Event:
    frame: Frame

    @property
    def receipt(self) -> str | None:
        """The `receipt` header the client asked to have answered, if any."""
        return self.frame.get(RECEIPT)


@dataclass(frozen=True, slots=True)
class Connect(Event):
    version: str
    host: str | None
    login: str | None
    passcode: str | None
    #: Negotiated (server sends every N ms, server expects the client every N ms); 0 = never.
    heartbeat: tuple[int, int]


@dataclass(frozen=True, slots=True)
class Send(Event):
    destination: str
    transaction: str | None


@dataclass(frozen=True, slots=True)
class Subscribe(Event):
    id: str
    destination: str
    ack: AckMode


@dataclass(frozen=True, slots=True)
class Unsubscribe(Event):
    id: str


@dataclass(frozen=True, slots=True)
class Ack(Event):
    #: The `ack` header value of the MESSAGE (1.2 `id`; 1.0/1.1 `message-id`).
    id: str
    transaction: str | None


@dataclass(frozen=True, slots=True)
class Nack(Event):
    id: str
    transaction: str | None


@dataclass(frozen=True, slots=True)
class Begin(Event):
    transaction: str


@dataclass(frozen=True, slots=True)
class Commit(Event):
    transaction: str


@dataclass(frozen=True, slots=True)
class Abort(Event):
    transaction: str


@dataclass(frozen=True, slots=True)
class Disconnect(Event):
    pass


@dataclass(frozen=True, slots=True)
class Violation:
    """The peer broke the protocol: answer ERROR (`message`, body `detail`) and close."""

    message: str
    detail: str = ""
    receipt: str | None = None
    headers: Headers = ()


ClientEvent = (
    Connect | Send | Subscribe | Unsubscribe | Ack | Nack | Begin | Commit | Abort | Disconnect
)
