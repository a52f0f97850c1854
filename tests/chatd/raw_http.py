"""HTTP/1.1 over a raw socket, for what an HTTP library would hide (keep-alive, pipelining)."""

from __future__ import annotations

import trio


async def read_response(stream: trio.SocketStream, buffer: bytearray) -> bytes:
    """Read one response with a Content-Length body; leave anything after it in `buffer`."""
    while b"\r\n\r\n" not in buffer:
        chunk = await stream.receive_some(65536)
        assert chunk, f"closed before a full response: {bytes(buffer)!r}"
        buffer += chunk
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(rest) < length:
        chunk = await stream.receive_some(65536)
        assert chunk, "closed in the middle of a body"
        rest += chunk
    buffer[:] = rest[length:]
    return head + b"\r\n\r\n" + rest[:length]
