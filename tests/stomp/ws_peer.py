"""A raw WebSocket client for the transport tests: hand-built (masked) frames over any trio
stream, and the server's frames read back as they are on the wire, header included."""

from __future__ import annotations

import struct
from dataclasses import dataclass

import trio

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

#: RFC 6455 §1.3's example key and the accept value it must produce.
KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
ACCEPT = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
_MASK = b"\x37\xfa\x21\x3d"


def frame(
    opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0, masked: bool = True
) -> bytes:
    """A client frame; `rsv` is the three reserved bits as a number (0-7)."""
    first = (0x80 if fin else 0) | rsv << 4 | opcode
    mask_bit = 0x80 if masked else 0
    length = len(payload)
    if length < 126:
        head = bytes((first, mask_bit | length))
    elif length < 65536:
        head = struct.pack("!BBH", first, mask_bit | 126, length)
    else:
        head = struct.pack("!BBQ", first, mask_bit | 127, length)
    if not masked:
        return head + payload
    return head + _MASK + bytes(byte ^ _MASK[i % 4] for i, byte in enumerate(payload))


def close_frame(code: int, reason: bytes = b"") -> bytes:
    return frame(OP_CLOSE, struct.pack("!H", code) + reason)


@dataclass(frozen=True)
class Received:
    """One server frame: its header as sent, and the payload."""

    header: bytes
    payload: bytes

    @property
    def opcode(self) -> int:
        return self.header[0] & 0x0F

    @property
    def fin(self) -> bool:
        return bool(self.header[0] & 0x80)

    @property
    def close_code(self) -> int:
        code: int = struct.unpack("!H", self.payload[:2])[0]
        return code


class RawWsClient:
    """The client side of one connection: `handshake`, `send`, `frame`, `eof`."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._buffer = bytearray()

    async def handshake(self, path: str = "/") -> None:
        await self.stream.send_all(
            f"GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {KEY.decode()}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        while b"\r\n\r\n" not in self._buffer:
            assert await self._read(), "closed during the handshake"
        head, _, rest = bytes(self._buffer).partition(b"\r\n\r\n")
        self._buffer[:] = rest
        assert head.startswith(b"HTTP/1.1 101 "), head
        assert ACCEPT in head, head

    async def send(self, *frames: bytes) -> None:
        """The frames, in one write."""
        await self.stream.send_all(b"".join(frames))

    async def frame(self) -> Received:
        header = await self._take(2)
        assert not header[1] & 0x80, "server frames are never masked"
        length = header[1] & 0x7F
        if length == 126:
            extended = await self._take(2)
            length = struct.unpack("!H", extended)[0]
            header += extended
        elif length == 127:
            extended = await self._take(8)
            length = struct.unpack("!Q", extended)[0]
            header += extended
        return Received(header, await self._take(length))

    async def eof(self) -> bool:
        """Whether the server closed the connection with nothing more sent."""
        return not self._buffer and not await self._read()

    async def _take(self, size: int) -> bytes:
        while len(self._buffer) < size:
            assert await self._read(), "closed mid-frame"
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    async def _read(self) -> bool:
        try:
            data = await self.stream.receive_some(65536)
        except trio.BrokenResourceError:
            data = b""
        self._buffer += data
        return bool(data)
