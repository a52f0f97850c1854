"""The load generator's wire layer: raw trio sockets, pre-encoded STOMP frames, and a minimal
WebSocket client (RFC 6455) — no STOMP library, so the generator spends its core on traffic.

`Conn.recv()` returns the next STOMP-level bytes (for WebSocket: the payloads of the data
messages read, concatenated); `FrameSplitter` cuts such bytes into frames at NUL. Outgoing
WebSocket frames are masked with an all-zero key: a valid mask that lets the payload go out
unchanged (the server still runs its unmasking code).
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

import trio

RECV_SIZE = 256 * 1024
_WS_KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
_ZERO_MASK = b"\x00\x00\x00\x00"


class WireError(Exception):
    """The peer refused, closed, or answered something we did not expect."""


@dataclass(frozen=True)
class Endpoint:
    """Where a broker listens: raw STOMP (`ws_path` None) or STOMP over WebSocket."""

    host: str
    port: int
    ws_path: str | None = None
    vhost: str = "/"
    login: str = "guest"
    passcode: str = "guest"

    @property
    def transport(self) -> str:
        return "tcp" if self.ws_path is None else "ws"


def frame(command: str, headers: dict[str, str] | None = None, body: bytes = b"") -> bytes:
    """One encoded STOMP frame (header values must not need escaping)."""
    lines = [command]
    lines += [f"{name}:{value}" for name, value in (headers or {}).items()]
    if body:
        lines.append(f"content-length:{len(body)}")
    return ("\n".join(lines) + "\n\n").encode() + body + b"\x00"


def connect_frame(ep: Endpoint) -> bytes:
    """CONNECT for STOMP 1.2, without heart-beats."""
    return frame(
        "CONNECT",
        {
            "accept-version": "1.2",
            "host": ep.vhost,
            "login": ep.login,
            "passcode": ep.passcode,
            "heart-beat": "0,0",
        },
    )


def send_prefix(destination: str) -> bytes:
    """The SEND frame up to its body, for bodies appended with `send_frame`."""
    return f"SEND\ndestination:{destination}\n".encode()


def send_frame(prefix: bytes, body: bytes) -> bytes:
    return b"%scontent-length:%d\n\n%s\x00" % (prefix, len(body), body)


def ws_frame(payload: bytes) -> bytes:
    """A masked (zero key) final text frame carrying `payload`."""
    n = len(payload)
    if n < 126:
        header = bytes((0x81, 0x80 | n))
    elif n < 65536:
        header = struct.pack("!BBH", 0x81, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
    return header + _ZERO_MASK + payload


class FrameSplitter:
    """Cuts a STOMP byte stream into frames at NUL; leading EOLs (heart-beats) stay on them."""

    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf = b""

    def feed(self, data: bytes) -> list[bytes]:
        parts = (self.buf + data).split(b"\x00") if self.buf else data.split(b"\x00")
        self.buf = parts.pop()
        return parts


def ws_decode(raw: bytes) -> tuple[bytes, bytes, bool]:
    """(payloads of the complete frames in `raw`, the undecoded rest, whether a close frame
    came); a close frame ends the stream."""
    pos, out, end = 0, [], len(raw)
    while end - pos >= 2:
        b0, b1 = raw[pos], raw[pos + 1]
        n, head = b1 & 0x7F, 2
        if n == 126:
            if end - pos < 4:
                break
            n, head = (raw[pos + 2] << 8) | raw[pos + 3], 4
        elif n == 127:
            if end - pos < 10:
                break
            n, head = struct.unpack_from("!Q", raw, pos + 2)[0], 10
        if b1 & 0x80:
            head += 4  # servers never mask; tolerate it by skipping the key
        if end - pos < head + n:
            break
        opcode = b0 & 0x0F
        if opcode in (0, 1, 2):
            out.append(raw[pos + head : pos + head + n])
        elif opcode == 8:
            return b"".join(out), b"", True
        pos += head + n
    return b"".join(out), raw[pos:] if pos else raw, False


def handshake_request(ep: Endpoint) -> bytes:
    return (
        f"GET {ep.ws_path} HTTP/1.1\r\nHost: {ep.host}:{ep.port}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {_WS_KEY.decode()}\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Protocol: v12.stomp\r\n\r\n"
    ).encode()


def handshake_response(data: bytes) -> bytes | None:
    """None until `data` holds the whole response; then the bytes after it (WS frames)."""
    if b"\r\n\r\n" not in data:
        return None
    head, _, rest = data.partition(b"\r\n\r\n")
    if b" 101 " not in head.split(b"\r\n", 1)[0]:
        raise WireError(f"WebSocket handshake refused: {head[:80]!r}")
    return rest


class Conn:
    """One client connection, raw STOMP or STOMP over WebSocket."""

    __slots__ = ("_raw", "_ws", "closed", "sock", "stream")

    def __init__(self, stream: trio.SocketStream, ws: bool) -> None:
        self.stream = stream
        self.sock = stream.socket
        self._ws = ws
        self._raw = b""  # undecoded WebSocket bytes
        self.closed = False

    @classmethod
    async def open(cls, ep: Endpoint, source: str | None = None) -> Conn:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if source is not None:
                sock.setsockopt(socket.SOL_IP, socket.IP_BIND_ADDRESS_NO_PORT, 1)
                await sock.bind((source, 0))
            await sock.connect((ep.host, ep.port))
        except BaseException:
            sock.close()
            raise
        conn = cls(trio.SocketStream(sock), ep.ws_path is not None)
        try:
            if ep.ws_path is not None:
                await conn._handshake(ep)
        except BaseException:
            await conn.aclose()
            raise
        return conn

    async def _handshake(self, ep: Endpoint) -> None:
        await self.stream.send_all(handshake_request(ep))
        data = b""
        while (rest := handshake_response(data)) is None:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise WireError("connection closed during the WebSocket handshake")
            data += chunk
        self._raw = rest

    async def send(self, data: bytes) -> None:
        """Send STOMP bytes (as one WebSocket message over WS)."""
        await self.stream.send_all(ws_frame(data) if self._ws else data)

    async def recv(self) -> bytes:
        """The next STOMP bytes; b"" once the peer closed."""
        if not self._ws:
            if self.closed:
                return b""
            try:
                data = await self.stream.receive_some(RECV_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                self.closed = True
            return data
        while True:
            out = self._decode()
            if out or self.closed:
                return out
            try:
                chunk = await self.stream.receive_some(RECV_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                chunk = b""
            if not chunk:
                self.closed = True
                return b""
            self._raw = self._raw + chunk if self._raw else chunk

    def _decode(self) -> bytes:
        out, self._raw, closed = ws_decode(self._raw)
        self.closed = self.closed or closed
        return out

    async def aclose(self) -> None:
        self.closed = True
        await self.stream.aclose()


async def stomp_connect(ep: Endpoint, source: str | None = None) -> tuple[Conn, FrameSplitter]:
    """Open a connection and CONNECT (no heart-beats); raises WireError on anything but
    CONNECTED."""
    conn = await Conn.open(ep, source)
    splitter = FrameSplitter()
    try:
        await conn.send(connect_frame(ep))
        first = await next_frames(conn, splitter)
        if not first[0].lstrip(b"\r\n").startswith(b"CONNECTED"):
            raise WireError(f"CONNECT refused: {first[0][:200]!r}")
    except BaseException:
        await conn.aclose()
        raise
    return conn, splitter


async def next_frames(conn: Conn, splitter: FrameSplitter) -> list[bytes]:
    """At least one complete frame; raises WireError at end of stream."""
    while True:
        data = await conn.recv()
        if not data:
            raise WireError("the broker closed the connection")
        frames = [f for f in splitter.feed(data) if f.strip(b"\r\n")]
        if frames:
            return frames


async def subscribe(conn: Conn, splitter: FrameSplitter, subs: list[tuple[str, str]]) -> None:
    """SUBSCRIBE to each (id, destination), the last with a receipt, and wait for it."""
    frames = [
        frame("SUBSCRIBE", {"id": sid, "destination": dest, "ack": "auto"})
        for sid, dest in subs[:-1]
    ]
    sid, dest = subs[-1]
    frames.append(
        frame("SUBSCRIBE", {"id": sid, "destination": dest, "ack": "auto", "receipt": f"r-{sid}"})
    )
    await conn.send(b"".join(frames))
    while True:
        for f in await next_frames(conn, splitter):
            f = f.lstrip(b"\r\n")
            if f.startswith(b"RECEIPT"):
                return
            if f.startswith(b"ERROR"):
                raise WireError(f"SUBSCRIBE refused: {f[:200]!r}")


class BlockingConn:
    """A blocking-socket connection for strictly sequential traffic (ping-pong), where an
    event loop would only add its own overhead to every round trip."""

    def __init__(self, ep: Endpoint, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((ep.host, ep.port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.endpoint = ep
        self.ws = ep.ws_path is not None
        self.raw = b""
        if self.ws:
            self.sock.sendall(handshake_request(ep))
            data = b""
            while (rest := handshake_response(data)) is None:
                data += self._read()
            self.raw = rest

    def _read(self) -> bytes:
        chunk = self.sock.recv(RECV_SIZE)
        if not chunk:
            raise WireError("the broker closed the connection")
        return chunk

    def send(self, data: bytes) -> None:
        self.sock.sendall(ws_frame(data) if self.ws else data)

    def recv(self) -> bytes:
        """The next STOMP bytes (at least one)."""
        if not self.ws:
            return self._read()
        while True:
            out, self.raw, closed = ws_decode(self.raw)
            if closed:
                raise WireError("the broker closed the WebSocket")
            if out:
                return out
            self.raw += self._read()

    def close(self) -> None:
        self.sock.close()
