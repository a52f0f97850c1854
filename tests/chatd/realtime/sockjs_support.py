"""Helpers shared by the SockJS protocol tests: a chatd with short SockJS timings, STOMP
frames as SockJS messages, and the header checks the protocol asks for."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio

from .conftest import ALICE, Chat, chat_config, start_chat

#: Long enough that a loaded machine's next request comes in time, short enough to wait out.
DISCONNECT_DELAY = 1.0
HEARTBEAT = 1.5
RESPONSE_LIMIT = 4096
NO_CACHE = "no-store, no-cache, no-transform, must-revalidate, max-age=0"
NUL = "\x00"


async def start_sockjs_chat(
    nursery: trio.Nursery, tmp_path: Path, key_pair: tuple[bytes, Path]
) -> Chat:
    """chatd over SQLite with short SockJS timings and a 4 KiB streaming response limit."""
    config = chat_config(
        tmp_path,
        f"sqlite:///{tmp_path / 'chat.sqlite3'}",
        key_pair[1],
        sockjs_disconnect_delay=DISCONNECT_DELAY,
        sockjs_heartbeat_seconds=HEARTBEAT,
        sockjs_response_limit=RESPONSE_LIMIT,
    )
    return await start_chat(nursery, config, key_pair[0])


@pytest.fixture(name="chat")
async def sockjs_chat_fixture(
    nursery: trio.Nursery, tmp_path: Path, key_pair: tuple[bytes, Path]
) -> AsyncIterator[Chat]:
    """`start_sockjs_chat` for one test: a module that imports this gets it as its `chat`."""
    running = await start_sockjs_chat(nursery, tmp_path, key_pair)
    async with running.client:
        yield running
    running.scope.cancel()


def session_url() -> str:
    return f"/ws/000/{uuid.uuid4()}"


def connect_frame(token: str | None) -> str:
    passcode = f"passcode:{token}\n" if token else ""
    return f"CONNECT\naccept-version:1.2\nheart-beat:0,0\n{passcode}\n{NUL}"


def receipt_frame(receipt: str) -> str:
    return f"SUBSCRIBE\nid:{receipt}\ndestination:/user/queue/pong\nreceipt:{receipt}\n\n{NUL}"


def stomp_frames(frame: str) -> list[str]:
    """The STOMP frames in an ``a[...]`` SockJS frame."""
    assert frame.startswith("a["), frame
    return [f for m in json.loads(frame[1:]) for f in m.split(NUL) if f.strip("\n")]


async def xhr_send(client: httpx.AsyncClient, url: str, *messages: str) -> httpx.Response:
    return await client.post(url + "/xhr_send", content=json.dumps(list(messages)))


async def open_connected(chat: Chat) -> str:
    """A polling session with a STOMP session connected as alice."""
    url = session_url()
    assert (await chat.client.post(url + "/xhr")).text == "o\n"
    assert (await xhr_send(chat.client, url, connect_frame(chat.token(ALICE)))).status_code == 204
    answer = await chat.client.post(url + "/xhr")
    [connected] = stomp_frames(answer.text.rstrip("\n"))
    assert connected.startswith("CONNECTED\n")
    assert f"user-name:{ALICE}" in connected
    return url


def assert_cors(response: httpx.Response, origin: str | None = None) -> None:
    """The `Origin` echoed (``null`` too) with credentials; without one, ``*`` and never
    credentials (browsers refuse that pair)."""
    if origin:
        assert response.headers["access-control-allow-origin"] == origin
        assert response.headers["access-control-allow-credentials"] == "true"
    else:
        assert response.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in response.headers


class Body:
    """The body of a streaming response, read frame by frame (`sep` ends each)."""

    def __init__(self, response: httpx.Response) -> None:
        self._chunks = response.aiter_text()
        self.buffer = ""
        self.ended = False

    async def _more(self) -> None:
        try:
            self.buffer += await self._chunks.__anext__()
        except StopAsyncIteration:
            self.ended = True

    async def take(self, size: int) -> str:
        while len(self.buffer) < size and not self.ended:
            await self._more()
        taken, self.buffer = self.buffer[:size], self.buffer[size:]
        return taken

    async def frame(self, sep: str = "\n") -> str:
        """The next frame without its separator; "" at the end of the body."""
        with trio.fail_after(10):
            while sep not in self.buffer and not self.ended:
                await self._more()
        if sep not in self.buffer:
            assert not self.buffer, f"body ended in a frame: {self.buffer!r}"
            return ""
        frame, _, self.buffer = self.buffer.partition(sep)
        return frame
