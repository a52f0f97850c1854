"""The three ways a soak client reaches chatd, each carrying STOMP bytes both ways:
STOMP over WebSocket on ``/ws`` (bench's raw client), and SockJS's xhr-streaming and
xhr-polling (what sockjs-client falls back to behind proxies that break WebSockets).

A transport is used inside a nursery that owns its background reader (SockJS); leaving the
nursery ends it. `recv()` returns STOMP bytes, b"" once the connection is gone.
"""

from __future__ import annotations

import json
import uuid
from typing import Protocol

import httpx
import trio

from bench.wire import Conn, Endpoint

WS = "ws"
XHR_STREAMING = "xhr_streaming"
XHR_POLLING = "xhr"
KINDS = (WS, XHR_STREAMING, XHR_POLLING)
INBOX = 256  # SockJS frames buffered between the HTTP reader and the STOMP reader


class Transport(Protocol):
    async def send(self, data: bytes) -> None: ...
    async def recv(self) -> bytes: ...
    async def aclose(self) -> None: ...


class WsTransport:
    """STOMP over a raw WebSocket (`bench.wire.Conn`), sends serialised by a lock (the reader,
    the heart-beat and the sender all write)."""

    def __init__(self, conn: Conn) -> None:
        self.conn = conn
        self.lock = trio.Lock()

    @classmethod
    async def open(cls, host: str, port: int) -> WsTransport:
        return cls(await Conn.open(Endpoint(host, port, "/ws")))

    async def send(self, data: bytes) -> None:
        async with self.lock:
            await self.conn.send(data)

    async def recv(self) -> bytes:
        return await self.conn.recv()

    async def aclose(self) -> None:
        await self.conn.aclose()


class SockJSTransport:
    """A SockJS session over HTTP: one receiving request at a time (a long streaming response,
    or one poll after another), sends as ``xhr_send`` POSTs. The access token rides in every
    URL's query, which is how chatd knows the session's opener."""

    def __init__(self, http: httpx.AsyncClient, base: str, kind: str, token: str) -> None:
        self.http = http
        self.kind = kind
        self.url = f"{base}/ws/{uuid.uuid4().int % 1000:03d}/{uuid.uuid4().hex}"
        self.query = {"access_token": token}
        self.inbox_in, self.inbox = trio.open_memory_channel[bytes](INBOX)
        self.lock = trio.Lock()
        self.closed = False

    @classmethod
    async def open(
        cls, http: httpx.AsyncClient, base: str, kind: str, token: str, nursery: trio.Nursery
    ) -> SockJSTransport:
        t = cls(http, base, kind, token)
        opened = trio.Event()
        nursery.start_soon(t._receive_loop, opened)
        with trio.fail_after(15):
            await opened.wait()
        if t.closed:
            raise ConnectionError("SockJS session refused")
        return t

    async def _receive_loop(self, opened: trio.Event) -> None:
        try:
            while not self.closed:
                if self.kind == XHR_STREAMING:
                    await self._stream(opened)
                else:
                    await self._poll(opened)
        except (httpx.HTTPError, OSError):
            pass
        finally:
            self.closed = True
            opened.set()
            self.inbox_in.close()

    async def _stream(self, opened: trio.Event) -> None:
        async with self.http.stream(
            "POST", f"{self.url}/xhr_streaming", params=self.query
        ) as response:
            if response.status_code != 200:
                self.closed = True
                return
            buf = b""
            async for chunk in response.aiter_raw():
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    if not await self._frame(line, opened):
                        return
        # the response ended (sockjs_response_limit): open the next one on the same session

    async def _poll(self, opened: trio.Event) -> None:
        response = await self.http.post(f"{self.url}/xhr", params=self.query)
        if response.status_code != 200:
            self.closed = True
            return
        for line in response.content.split(b"\n"):
            if not await self._frame(line, opened):
                return

    async def _frame(self, line: bytes, opened: trio.Event) -> bool:
        """Handle one SockJS frame; False once the session is closed."""
        if not line or line[:1] == b"h":
            return True  # heart-beat or the streaming prelude
        kind = line[:1]
        if kind == b"o":
            if opened.is_set():  # a new session under our id: the server forgot ours
                self.closed = True
                return False
            opened.set()
        elif kind == b"a":
            data = "".join(json.loads(line[1:])).encode()
            if data:
                await self.inbox_in.send(data)
        elif kind == b"c":
            self.closed = True
            return False
        return True

    async def send(self, data: bytes) -> None:
        if self.closed:
            raise ConnectionError("SockJS session closed")
        body = json.dumps([data.decode()]).encode()
        async with self.lock:  # SockJS keeps the order of xhr_send bodies only one at a time
            response = await self.http.post(f"{self.url}/xhr_send", params=self.query, content=body)
        if response.status_code != 204:
            self.closed = True
            raise ConnectionError(f"xhr_send answered {response.status_code}")

    async def recv(self) -> bytes:
        try:
            return await self.inbox.receive()
        except trio.EndOfChannel:
            return b""

    async def aclose(self) -> None:
        self.closed = True
