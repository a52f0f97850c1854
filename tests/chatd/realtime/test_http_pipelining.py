"""HTTP/1.1 pipelining over a raw socket: every answer arrives, in order, and nothing a client
pipelines can make hypercorn's connection handling fail (`chatd.http.keepalive`).

hypercorn 0.18's trio worker sent the connection's EOF outside its send lock, so it could race
a response still being written: a `trio.BusyResourceError` in that request ("Error in ASGI
Framework"), or, when the loser was hypercorn's own reader answering a malformed request, one
that escaped the connection and stopped the whole server.
"""

from __future__ import annotations

import logging
import socket
import struct
import uuid
from pathlib import Path

import pytest
import trio

from tests.chatd.raw_http import read_response

from .conftest import Chat, chat_config, start_chat
from .sockjs_support import sockjs_chat_fixture  # noqa: F401 - `chat` here: SockJS-tuned

pytestmark = pytest.mark.timeout(60)

PIPELINED = 50
CONNECTIONS = 4
ROUNDS = 5


def open_request() -> bytes:
    """An xhr poll that opens a new SockJS session: answered at once, its body never read."""
    return (
        f"POST /ws/000/{uuid.uuid4()}/xhr HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n"
    ).encode()


#: Answered the same way, but its (chunked) body is malformed: hypercorn's reader fails on it
#: while the app's answer is being written, and closes the connection.
BAD_BODY = b"POST /ws/000/bad/xhr HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        f"{r.name}: {r.getMessage()} {r.exc_info[1] if r.exc_info else ''}"
        for r in caplog.records
        if r.levelno >= logging.ERROR
    ]


async def test_pipelined_requests_are_all_answered_without_an_error(
    chat: Chat, caplog: pytest.LogCaptureFixture
) -> None:
    answers: list[list[bytes]] = [[] for _ in range(CONNECTIONS)]

    async def pipeline(mine: list[bytes]) -> None:
        async with await trio.open_tcp_stream("127.0.0.1", chat.port) as stream:
            buffer = bytearray()
            for _ in range(ROUNDS):
                await stream.send_all(b"".join(open_request() for _ in range(PIPELINED)))
                mine += [await read_response(stream, buffer) for _ in range(PIPELINED)]

    with trio.fail_after(45):
        async with trio.open_nursery() as nursery:
            for mine in answers:
                nursery.start_soon(pipeline, mine)
    assert [len(mine) for mine in answers] == [ROUNDS * PIPELINED] * CONNECTIONS
    assert all(
        a.startswith(b"HTTP/1.1 200") and a.endswith(b"\r\n\r\no\n")
        for mine in answers
        for a in mine
    )
    assert errors(caplog) == []


async def test_a_malformed_pipelined_body_closes_its_connection_not_the_server(
    chat: Chat, caplog: pytest.LogCaptureFixture
) -> None:
    async def attack() -> None:
        for _ in range(10):
            async with await trio.open_tcp_stream("127.0.0.1", chat.port) as stream:
                await stream.send_all(
                    b"".join(open_request() for _ in range(PIPELINED - 1)) + BAD_BODY
                )
                with trio.fail_after(10):
                    got = b""
                    while chunk := await stream.receive_some(65536):
                        got += chunk  # until the server closes the connection
                # Every well-formed request before the bad one was answered.
                assert got.count(b"HTTP/1.1 200 ") >= PIPELINED - 1

    with trio.fail_after(45):
        async with trio.open_nursery() as nursery:
            for _ in range(CONNECTIONS):
                nursery.start_soon(attack)
    assert errors(caplog) == []
    # The server still serves.
    assert (await chat.client.get("/health/live")).status_code == 200


async def test_a_silent_or_reset_connection_closes_alone_not_the_server(
    nursery: trio.Nursery, tmp_path: Path, key_pair: tuple[bytes, Path]
) -> None:
    """Found by the soak (issue 22): a connection that sent nothing within keepalive_timeout
    (an UnboundLocalError), or was reset before its first request (BrokenResourceError),
    raised in the listener's nursery and stopped the whole server."""
    config = chat_config(
        tmp_path, f"sqlite:///{tmp_path / 'chat.sqlite3'}", key_pair[1], keepalive_timeout=0.3
    )
    chat = await start_chat(nursery, config, key_pair[0])
    async with chat.client:
        for _ in range(3):  # reset at once: RST instead of FIN
            sock = socket.create_connection(("127.0.0.1", chat.port))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        async with await trio.open_tcp_stream("127.0.0.1", chat.port) as silent:
            with trio.fail_after(5):
                assert await silent.receive_some(1024) == b""  # closed after the timeout
        assert (await chat.client.get("/health/live")).status_code == 200
        assert not chat.done.is_set()
    chat.scope.cancel()
