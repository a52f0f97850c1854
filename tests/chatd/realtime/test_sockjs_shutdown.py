"""SIGTERM with SockJS sessions open: each gets the STOMP ERROR ("server shutting down") and
the SockJS close frame, streaming responses end, and the server stops by itself."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import trio
import trio_websocket

from .conftest import ALICE, BOB, chat_config, start_chat
from .sockjs_support import Body, connect_frame, session_url, stomp_frames, xhr_send

pytestmark = pytest.mark.timeout(30)


async def test_sigterm_closes_sockjs_sessions(
    nursery: trio.Nursery, tmp_path: Path, key_pair: tuple[bytes, Path]
) -> None:
    config = chat_config(tmp_path, f"sqlite:///{tmp_path / 'chat.sqlite3'}", key_pair[1])
    chat = await start_chat(nursery, config, key_pair[0], handle_signals=True)
    url = session_url()
    ws_url = chat.ws_url + session_url().removeprefix("/ws") + "/websocket"
    async with (
        chat.client,
        chat.client.stream("POST", url + "/xhr_streaming") as response,
        trio_websocket.open_websocket_url(ws_url) as ws,
    ):
        body = Body(response)
        await body.frame()  # prelude
        assert await body.frame() == "o"
        await xhr_send(chat.client, url, connect_frame(chat.token(ALICE)))
        assert stomp_frames(await body.frame())[0].startswith("CONNECTED\n")
        assert await ws.get_message() == "o"
        await ws.send_message(json.dumps([connect_frame(chat.token(BOB))]))
        assert stomp_frames(await ws.get_message())[0].startswith("CONNECTED\n")

        with trio.fail_after(10):
            os.kill(os.getpid(), signal.SIGTERM)
            [error] = stomp_frames(await body.frame())
            assert error.startswith("ERROR\n")
            assert "message:server shutting down" in error
            assert await body.frame() == 'c[3000,"Go away!"]'
            assert await body.frame() == ""  # the response ended
            [error] = stomp_frames(await ws.get_message())
            assert "message:server shutting down" in error
            assert await ws.get_message() == 'c[3000,"Go away!"]'
            with pytest.raises(trio_websocket.ConnectionClosed):
                await ws.get_message()
    with trio.fail_after(10):
        await chat.done.wait()  # serve returned by itself
