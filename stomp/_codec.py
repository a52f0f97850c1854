"""Incremental STOMP 1.2 decoder and the encoder (sans-IO: bytes in, frames out).

The decoder accepts LF or CRLF line ends, EOLs between frames (heart-beats), escaped headers,
repeated headers, `content-length` bodies that contain NUL, and UTF-8 headers; it refuses NUL
in a header (no escape exists for it). Every limit is a
keyword argument; crossing one, or any malformed input, raises `RemoteProtocolError` — never
another exception — and leaves the decoder failed, since the stream can no longer be trusted.
"""

from __future__ import annotations

from ._errors import LocalProtocolError, RemoteProtocolError
from ._frames import CONTENT_LENGTH, UNESCAPED_COMMANDS, Command, Frame, escape, unescape

DEFAULT_MAX_BODY_SIZE = 16 * 1024 * 1024
DEFAULT_MAX_HEADER_COUNT = 64
DEFAULT_MAX_HEADER_LINE = 8 * 1024
DEFAULT_MAX_FRAME_SIZE = DEFAULT_MAX_BODY_SIZE + 64 * 1024

HEARTBEAT = b"\n"
_COMMANDS = {command.value.encode(): command for command in Command}


class FrameDecoder:
    """Turns a byte stream into frames: `feed(data)`, then `next_frame()` until it returns None."""

    def __init__(
        self,
        *,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        max_header_count: int = DEFAULT_MAX_HEADER_COUNT,
        max_header_line: int = DEFAULT_MAX_HEADER_LINE,
        max_body_size: int = DEFAULT_MAX_BODY_SIZE,
        escaping: bool = True,
    ) -> None:
        self.max_frame_size = max_frame_size
        self.max_header_count = max_header_count
        self.max_header_line = max_header_line
        self.max_body_size = max_body_size
        #: STOMP 1.0 has no header escaping; set False once a 1.0 session is negotiated.
        self.escaping = escaping
        self._buf = bytearray()
        self._failed: RemoteProtocolError | None = None
        self._reset()

    def _reset(self) -> None:
        self._pos = 0  # next unparsed byte of the current frame
        self._command: Command | None = None
        self._headers: list[tuple[str, str]] = []
        self._in_body = False
        self._content_length: int | None = None
        self._nul_scan = 0  # where the search for the terminating NUL resumes

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray) -> None:
        """Append received bytes; call `next_frame()` to take frames out."""
        if self._failed is not None:
            raise LocalProtocolError("feed() after the decoder failed")
        self._buf += data

    def next_frame(self) -> Frame | None:
        """The next complete frame, or None if more bytes are needed.

        Raises RemoteProtocolError for malformed input or a crossed limit; the decoder then
        stays failed.
        """
        if self._failed is not None:
            raise self._failed
        try:
            if not self._in_body and not self._parse_head():
                return None
            return self._parse_body()
        except RemoteProtocolError as exc:
            self._failed = exc
            raise

    def _parse_head(self) -> bool:
        buf = self._buf
        if self._command is None:
            self._skip_heartbeats()
        while True:
            newline = buf.find(b"\n", self._pos)
            if newline < 0:
                if len(buf) - self._pos > self.max_header_line:
                    raise RemoteProtocolError(
                        "header line too long", f"limit {self.max_header_line}"
                    )
                if len(buf) > self.max_frame_size:
                    raise RemoteProtocolError("frame too large", f"limit {self.max_frame_size}")
                return False
            end = newline - 1 if newline > self._pos and buf[newline - 1] == 13 else newline
            if end - self._pos > self.max_header_line:
                raise RemoteProtocolError("header line too long", f"limit {self.max_header_line}")
            line = bytes(buf[self._pos : end])
            self._pos = newline + 1
            if self._command is None:
                self._command = self._parse_command(line)
            elif line:
                self._add_header(line)
            else:
                self._in_body = True
                return True

    def _skip_heartbeats(self) -> None:
        buf = self._buf
        skip = 0
        size = len(buf)
        while skip < size:
            if buf[skip] == 10:
                skip += 1
            elif buf[skip] == 13 and skip + 1 < size and buf[skip + 1] == 10:
                skip += 2
            else:
                break
        if skip:
            del buf[:skip]

    @staticmethod
    def _parse_command(line: bytes) -> Command:
        command = _COMMANDS.get(line)
        if command is None:
            shown = line[:40].decode("utf-8", "replace")
            raise RemoteProtocolError("unknown command", f"unknown command {shown!r}")
        return command

    def _add_header(self, line: bytes) -> None:
        if len(self._headers) >= self.max_header_count:
            raise RemoteProtocolError("too many headers", f"limit {self.max_header_count}")
        if b"\0" in line:
            # STOMP has no escape for NUL: relayed raw, it would end the frame early for the
            # receiver, and what follows would read as a second, forged frame.
            raise RemoteProtocolError("malformed header", "NUL in a header line")
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            raise RemoteProtocolError("header is not valid UTF-8") from None
        name, colon, value = text.partition(":")
        if not colon:
            raise RemoteProtocolError("malformed header", f"no ':' in header line {text[:80]!r}")
        if self.escaping and self._command not in UNESCAPED_COMMANDS:
            try:
                name, value = unescape(name), unescape(value)
            except ValueError as exc:
                raise RemoteProtocolError("malformed header", str(exc)) from None
        self._headers.append((name, value))
        if name == CONTENT_LENGTH and self._content_length is None:
            if not value.isdigit():
                raise RemoteProtocolError("invalid content-length", repr(value))
            self._content_length = int(value)
            if self._content_length > self.max_body_size:
                raise RemoteProtocolError("body too large", f"limit {self.max_body_size}")

    def _parse_body(self) -> Frame | None:
        buf = self._buf
        start = self._pos
        if self._content_length is not None:
            end = start + self._content_length
            if len(buf) <= end:
                return None
            if buf[end] != 0:
                raise RemoteProtocolError("frame not terminated by NUL after content-length")
        else:
            end = buf.find(b"\0", max(start, self._nul_scan))
            if end < 0:
                self._nul_scan = len(buf)
                if len(buf) - start > self.max_body_size:
                    raise RemoteProtocolError("body too large", f"limit {self.max_body_size}")
                return None
            if end - start > self.max_body_size:
                raise RemoteProtocolError("body too large", f"limit {self.max_body_size}")
        if end + 1 > self.max_frame_size:
            raise RemoteProtocolError("frame too large", f"limit {self.max_frame_size}")
        assert self._command is not None
        frame = Frame(self._command, tuple(self._headers), bytes(buf[start:end]))
        del buf[: end + 1]
        self._reset()
        return frame


def encode_frame(frame: Frame, *, escaping: bool = True) -> bytes:
    """Serialize `frame`; headers are written as given (add `content-length` yourself).

    `escaping=False` is for STOMP 1.0 peers; CONNECT/CONNECTED are never escaped.
    """
    parts = [frame.command.value, "\n"]
    escaped = escaping and frame.command not in UNESCAPED_COMMANDS
    for name, value in frame.headers:
        if escaped:
            name, value = escape(name), escape(value)
        elif "\n" in name or "\n" in value or ":" in name:
            raise LocalProtocolError(f"header {name!r} cannot be sent unescaped")
        parts += (name, ":", value, "\n")
    parts.append("\n")
    return "".join(parts).encode() + frame.body + b"\0"
