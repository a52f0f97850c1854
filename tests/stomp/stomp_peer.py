"""A minimal STOMP client over any trio stream, for the runtime and transport tests."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from stomp import Command, Frame, FrameDecoder, encode_frame


class Peer:
    """Sends encoded frames and decodes what comes back; heart-beat newlines are skipped."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.decoder = FrameDecoder(max_frame_size=1 << 30, max_body_size=1 << 30)
        self.closed = False

    async def send(
        self, command: str, headers: dict[str, str] | None = None, body: bytes = b""
    ) -> None:
        await self.stream.send_all(_encode(command, headers, body))

    async def send_many(self, frames: list[tuple[str, dict[str, str], bytes]]) -> None:
        """Several frames in one write."""
        await self.stream.send_all(b"".join(_encode(*frame) for frame in frames))

    async def connect(self, heartbeat: str = "0,0", **headers: str) -> Frame:
        await self.send(
            "CONNECT",
            {"accept-version": "1.2", "host": "localhost", "heart-beat": heartbeat, **headers},
        )
        frame = await self.frame()
        assert frame.command == "CONNECTED", frame
        return frame

    async def subscribe(self, destination: str, sub_id: str = "1", ack: str = "auto") -> None:
        await self.send(
            "SUBSCRIBE",
            {"destination": destination, "id": sub_id, "ack": ack, "receipt": f"sub-{sub_id}"},
        )
        frame = await self.frame()
        assert (frame.command, frame.get("receipt-id")) == ("RECEIPT", f"sub-{sub_id}"), frame

    async def next_frame(self) -> Frame | None:
        """The next frame, or None at end of stream."""
        while (frame := self.decoder.next_frame()) is None:
            if self.closed:
                return None
            try:
                data = await self.stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                self.closed = True
                return None
            self.decoder.feed(bytes(data))
        return frame

    async def frame(self) -> Frame:
        frame = await self.next_frame()
        assert frame is not None, "the server closed the stream"
        return frame

    async def frames_until_eof(self) -> list[Frame]:
        frames = []
        while (frame := await self.next_frame()) is not None:
            frames.append(frame)
        return frames

    async def eof(self) -> bool:
        """True if the stream ends with no further frame."""
        return await self.next_frame() is None


def _encode(command: str, headers: dict[str, str] | None, body: bytes) -> bytes:
    return encode_frame(Frame(Command(command), tuple((headers or {}).items()), body))


def receipt_burst(count: int) -> bytes:
    """`count` BEGIN frames asking for receipts, in one write: frames no hook awaits on, so the
    broker queues every RECEIPT before it writes any (the case where it batches them)."""
    return b"".join(
        _encode("BEGIN", {"transaction": f"t{n}", "receipt": f"r{n}"}, b"") for n in range(count)
    )


async def frames_per_message(
    get_message: Callable[[], Awaitable[str | bytes]], count: int
) -> list[list[Frame]]:
    """Read WebSocket messages until `count` frames came; returns the frames of each message
    (heart-beat newlines are not frames). Fails if a message ends inside a frame."""
    messages: list[list[Frame]] = []
    while sum(map(len, messages)) < count:
        message = await get_message()
        decoder = FrameDecoder()
        decoder.feed(message.encode() if isinstance(message, str) else message)
        frames = []
        while (frame := decoder.next_frame()) is not None:
            frames.append(frame)
        assert decoder.buffered == 0, f"a message ends inside a frame: {message!r}"
        messages.append(frames)
    return messages
