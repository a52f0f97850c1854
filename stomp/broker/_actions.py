"""What the broker asks its runtime to do. The broker never performs I/O itself."""

from __future__ import annotations

from dataclasses import dataclass

SessionId = str


@dataclass(frozen=True, slots=True)
class Write:
    """Queue `data + tail` on the session's outbound stream (two parts, so that a MESSAGE's
    shared tail — headers and body, encoded once per publish — is never copied per subscriber)."""

    session: SessionId
    data: bytes
    tail: bytes = b""


@dataclass(frozen=True, slots=True)
class Close:
    """Flush what is queued for the session, then close its transport."""

    session: SessionId
    reason: str


@dataclass(frozen=True, slots=True)
class DestinationActive:
    """A destination gained its first subscriber (`active`) or lost its last one.

    A relay to other brokers binds and unbinds on these.
    """

    destination: str
    active: bool


@dataclass(frozen=True, slots=True)
class PrincipalActive:
    """A principal's first session connected (`active`), or its last one went away.

    What presence tracking follows: anonymous sessions never produce it.
    """

    principal: str
    active: bool


Action = Write | Close | DestinationActive | PrincipalActive
