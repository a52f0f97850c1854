"""The browser stack of the original web clients against chatd's SockJS endpoint:
@stomp/stompjs 7.5.0 over sockjs-client 1.6.1 under Node, one run per forced transport
(tests/node/sockjs_scenario.mjs runs the steps and prints what it saw; assertions are here).

The server offers short STOMP heart-beats and short SockJS heart-beat frames, and the clients
stay idle for several of both before sending again: a transport that lost heart-beats or let a
poll lapse would fail that second delivery.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.node_support import require_node, run_scenario

from .conftest import ALICE, BOB, Chat, chat_config, start_chat

SCRIPT = "sockjs_scenario.mjs"
# The server beats every 300 ms and wants the client's beats every second (a loaded machine
# may delay a Node timer; the server allows 1.5 intervals).
SEND_MS, RECEIVE_MS = 300, 1000
IDLE_MS = 2500

pytestmark = [pytest.mark.node, pytest.mark.timeout(60)]


@pytest.fixture(scope="module")
def node() -> str:
    return require_node("@stomp/stompjs", "sockjs-client")


@pytest.fixture
async def sockjs_chat(
    nursery: trio.Nursery, tmp_path: Path, key_pair: tuple[bytes, Path]
) -> AsyncIterator[Chat]:
    """chatd over SQLite with heart-beats short enough to see several in a test, and a
    streaming response limit low enough that streaming transports reconnect several times."""
    config = chat_config(
        tmp_path,
        f"sqlite:///{tmp_path / 'chat.sqlite3'}",
        key_pair[1],
        heartbeat_send_ms=SEND_MS,
        heartbeat_receive_ms=RECEIVE_MS,
        sockjs_heartbeat_seconds=0.3,
        sockjs_response_limit=1024,
    )
    running = await start_chat(nursery, config, key_pair[0])
    async with running.client:
        yield running
    running.scope.cancel()


async def scenario(node: str, chat: Chat, **options: Any) -> dict[str, Any]:
    return await run_scenario(node, SCRIPT, {"http": chat.http, **options}, seconds=45)


@pytest.mark.parametrize("transport", ["websocket", "xhr-streaming", "xhr-polling", "eventsource"])
async def test_stompjs_over_sockjs(node: str, sockjs_chat: Chat, transport: str) -> None:
    chat = sockjs_chat
    sid = await chat.init()
    result = await scenario(
        node,
        chat,
        transport=transport,
        sessionId=sid,
        tokens={"alice": chat.token(ALICE), "bob": chat.token(BOB)},
        heartbeatMs=SEND_MS,
        idleMs=IDLE_MS,
    )
    alice, bob = result["clients"]["alice"], result["clients"]["bob"]
    for seen in (alice, bob):
        assert seen["transports"] == [transport]  # no fallback, no reconnect
        assert seen["stompErrors"] == []
        assert seen["receipts"] == 1
        # Heart-beats flowed both ways while idle for 2.5 s.
        assert seen["pings"] >= 2, seen
        assert seen["pongs"] >= 4, seen
        assert seen["closes"][0]["code"] == 1000
    assert alice["connected"]["headers"]["user-name"] == ALICE
    assert bob["connected"]["headers"]["user-name"] == BOB
    assert alice["connected"]["headers"]["heart-beat"] == f"{SEND_MS},{RECEIVE_MS}"
    assert (result["ack"]["body"]["clientMessageId"], result["ack"]["body"]["seq"]) == (
        "sockjs-1",
        1,
    )
    assert [m["body"]["seq"] for m in result["received"]] == [1, 2]
    assert result["received"][0]["body"]["content"] == f"hi over {transport}"
    assert [m["headers"]["event"] for m in result["received"]] == ["message", "message"]
    history = await chat.history(sid)
    assert sorted(m["seq"] for m in history) == [1, 2]
