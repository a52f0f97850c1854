"""STOMP frames: the command set, header names and header escaping.

A `Frame` is plain data. Headers keep their wire order and repeats, because STOMP says the
first occurrence of a repeated header wins and proxies must pass the rest through.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import overload


class Command(StrEnum):
    CONNECT = "CONNECT"
    STOMP = "STOMP"
    CONNECTED = "CONNECTED"
    SEND = "SEND"
    SUBSCRIBE = "SUBSCRIBE"
    UNSUBSCRIBE = "UNSUBSCRIBE"
    ACK = "ACK"
    NACK = "NACK"
    BEGIN = "BEGIN"
    COMMIT = "COMMIT"
    ABORT = "ABORT"
    DISCONNECT = "DISCONNECT"
    MESSAGE = "MESSAGE"
    RECEIPT = "RECEIPT"
    ERROR = "ERROR"


CLIENT_COMMANDS = frozenset(
    {
        Command.CONNECT,
        Command.STOMP,
        Command.SEND,
        Command.SUBSCRIBE,
        Command.UNSUBSCRIBE,
        Command.ACK,
        Command.NACK,
        Command.BEGIN,
        Command.COMMIT,
        Command.ABORT,
        Command.DISCONNECT,
    }
)
SERVER_COMMANDS = frozenset({Command.CONNECTED, Command.MESSAGE, Command.RECEIPT, Command.ERROR})
#: CONNECT and CONNECTED predate escaping: their headers are taken literally (STOMP 1.2 §2.1).
UNESCAPED_COMMANDS = frozenset({Command.CONNECT, Command.STOMP, Command.CONNECTED})

ACCEPT_VERSION = "accept-version"
ACK = "ack"
CONTENT_LENGTH = "content-length"
CONTENT_TYPE = "content-type"
DESTINATION = "destination"
HEART_BEAT = "heart-beat"
HOST = "host"
ID = "id"
LOGIN = "login"
MESSAGE = "message"
MESSAGE_ID = "message-id"
PASSCODE = "passcode"
RECEIPT = "receipt"
RECEIPT_ID = "receipt-id"
SERVER = "server"
SESSION = "session"
SUBSCRIPTION = "subscription"
TRANSACTION = "transaction"
VERSION = "version"

Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Frame:
    """One STOMP frame; `headers` in wire order, repeats kept."""

    command: Command
    headers: Headers = ()
    body: bytes = b""

    @overload
    def get(self, name: str) -> str | None: ...
    @overload
    def get(self, name: str, default: str) -> str: ...
    @overload
    def get(self, name: str, default: str | None) -> str | None: ...

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of header `name` (STOMP: the first repeat wins), else `default`."""
        for key, value in self.headers:
            if key == name:
                return value
        return default


_ESCAPES = {"\\": "\\\\", "\r": "\\r", "\n": "\\n", ":": "\\c"}
_UNESCAPES = {"\\": "\\", "r": "\r", "n": "\n", "c": ":"}
_NEEDS_ESCAPE = str.maketrans(_ESCAPES)


def escape(value: str) -> str:
    """Escape a header name or value for STOMP 1.1/1.2."""
    return value.translate(_NEEDS_ESCAPE)


def unescape(value: str) -> str:
    """Undo `escape`; raises ValueError on an undefined escape sequence (a fatal error in 1.2)."""
    if "\\" not in value:
        return value
    out: list[str] = []
    chars = iter(value)
    for char in chars:
        if char != "\\":
            out.append(char)
            continue
        nxt = next(chars, "")
        replacement = _UNESCAPES.get(nxt)
        if replacement is None:
            raise ValueError(f"undefined escape sequence \\{nxt}")
        out.append(replacement)
    return "".join(out)
