"""SIGTERM: every STOMP session — WebSocket on the HTTP port and raw TCP — gets an ERROR
("server shutting down") and a clean close (WebSocket code 1001) before Hypercorn stops."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import trio
import trio_websocket

from ...stomp.stomp_peer import Peer
from .conftest import ALICE, BOB, chat_config, raw_ws_peer, start_chat

pytestmark = pytest.mark.timeout(30)


async def test_sigterm_sends_error_and_1001_to_every_session(
    nursery: trio.Nursery, tmp_path: Path, key_pair: tuple[bytes, Path]
) -> None:
    url = f"sqlite:///{tmp_path / 'chat.sqlite3'}"
    config = chat_config(tmp_path, url, key_pair[1], stomp_tcp_bind="127.0.0.1:0")
    chat = await start_chat(nursery, config, key_pair[0], handle_signals=True)
    assert chat.tcp is not None
    async with chat.client:
        sid = await chat.init()
    peers: list[tuple[Peer, trio_websocket.WebSocketConnection | None]] = []
    for path, email in (("/ws", ALICE), ("/ws/websocket", BOB)):
        peer, connection = await raw_ws_peer(nursery, chat, path)
        assert connection.subprotocol == "v12.stomp"
        await peer.connect(Authorization=f"Bearer {chat.token(email)}")
        peers.append((peer, connection))
    tcp = Peer(await trio.open_tcp_stream(*chat.tcp))
    await tcp.connect(passcode=chat.token(ALICE))
    peers.append((tcp, None))
    for n, (peer, _) in enumerate(peers):
        await peer.send(
            "SUBSCRIBE", {"destination": f"/topic/session.{sid}", "id": f"{n}", "receipt": "r"}
        )
        assert (await peer.frame()).get("receipt-id") == "r"

    with trio.fail_after(10):
        os.kill(os.getpid(), signal.SIGTERM)
        for peer, connection in peers:
            frames = await peer.frames_until_eof()
            assert [(f.command, f.get("message")) for f in frames] == [
                ("ERROR", "server shutting down")
            ]
            if connection is not None:
                assert connection.closed is not None
                assert connection.closed.code == 1001
        await chat.done.wait()  # serve returned by itself
