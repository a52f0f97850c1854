"""Runtime counters of a `BrokerRuntime`: plain attributes an application reads when it likes.

Why a stats object and not a metrics library: `stomp` is a standalone library with no opinion
on how numbers are exported. The runtime bumps these integers on paths it already walks (a
dict increment per frame), and an exporter (chatd's Prometheus collector) reads them at scrape
time. Nothing here blocks, allocates per frame beyond the first of a kind, or imports trio.
"""

from __future__ import annotations

from typing import Final

#: Distinct ERROR reasons kept apart; further ones are counted under `OTHER_REASON`, so a peer
#: cannot grow the table (and an exporter's label set) without bound.
DEFAULT_MAX_REASONS: Final = 64
OTHER_REASON: Final = "other"
#: The command label of a frame the decoder could not make sense of.
INVALID_COMMAND: Final = "INVALID"

_ERROR_HEAD: Final = b"ERROR\n"
_MESSAGE_HEADER: Final = b"\nmessage:"


class RuntimeStats:
    """Counts of one runtime since it was created.

    `frames_in` and `frames_out` map a STOMP command (``"SEND"``, ``"MESSAGE"``...) to frames
    received and queued for writing; `errors` maps an ERROR frame's ``message`` header to how
    many were sent; `sessions_opened` / `sessions_closed` count transports (their difference
    is the sessions open now); `slow_consumers` counts sessions closed for not reading.
    """

    __slots__ = (
        "_other_out",
        "errors",
        "frames_in",
        "max_reasons",
        "messages_out",
        "sessions_closed",
        "sessions_opened",
        "slow_consumers",
    )

    def __init__(self, *, max_reasons: int = DEFAULT_MAX_REASONS) -> None:
        self.frames_in: dict[str, int] = {}
        #: MESSAGE frames queued: the bulk of the traffic (a fan-out writes one per subscriber),
        #: so the runtime bumps this integer directly instead of calling `frame_out`.
        self.messages_out = 0
        self._other_out: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.sessions_opened = 0
        self.sessions_closed = 0
        self.slow_consumers = 0
        self.max_reasons = max_reasons

    def frame_in(self, command: str) -> None:
        """Count one frame received from a peer."""
        counts = self.frames_in
        counts[command] = counts.get(command, 0) + 1

    @property
    def frames_out(self) -> dict[str, int]:
        """Frames queued for peers, by command (a new dict on every call)."""
        counts = dict(self._other_out)
        if self.messages_out:
            counts["MESSAGE"] = counts.get("MESSAGE", 0) + self.messages_out
        return counts

    def frame_out(self, data: bytes) -> None:
        """Count one encoded frame queued for a peer (`data` starts with its command line)."""
        end = data.find(b"\n")
        command = data[:end].decode("ascii", "replace") if end > 0 else INVALID_COMMAND
        counts = self._other_out
        counts[command] = counts.get(command, 0) + 1
        if data.startswith(_ERROR_HEAD):
            self.error(_error_reason(data))

    def error(self, reason: str) -> None:
        """Count one ERROR frame sent, by its ``message`` header."""
        errors = self.errors
        if reason not in errors and len(errors) >= self.max_reasons:
            reason = OTHER_REASON
        errors[reason] = errors.get(reason, 0) + 1

    @property
    def sessions_open(self) -> int:
        """Transports open now."""
        return self.sessions_opened - self.sessions_closed


def _error_reason(data: bytes) -> str:
    """The ``message`` header of an encoded ERROR frame ("" when it has none)."""
    head_end = data.find(b"\n\n")
    head = data if head_end < 0 else data[: head_end + 1]
    start = head.find(_MESSAGE_HEADER)
    if start < 0:
        return ""
    start += len(_MESSAGE_HEADER)
    end = head.find(b"\n", start)
    value = head[start:end] if end >= 0 else head[start:]
    # STOMP 1.2 escapes ':' and '\n' in header values; a label needs no exact round trip.
    return value.decode("utf-8", "replace").replace("\\c", ":").replace("\\n", " ")
