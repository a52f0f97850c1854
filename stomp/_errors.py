"""The two kinds of protocol error (after h11).

`RemoteProtocolError`: the peer sent something we cannot accept; the connection answers with
an ERROR frame carrying `message` (and `detail` as the body), then closes.
`LocalProtocolError`: our own code misused the API; a bug, never the peer's fault.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Base class: `message` is the ERROR frame's `message` header, `detail` its body."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol or a configured limit."""


class LocalProtocolError(ProtocolError):
    """This side tried to do something the protocol does not allow."""
