"""Overload is refused, never queued without bound (issue 11): a client that pipelines sends
faster than chatd stores them gets the ones it could not store in time refused at once (an
error with `retryAfter` on /user/queue/error), and every send it was told was stored is
stored once and delivered in order."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import trio
import trio_websocket

from stomp.trio import websocket_stream

from ...stomp.stomp_peer import Peer
from .conftest import ALICE, chat_config, start_chat

FLOOD = 1500


async def test_a_flood_on_one_connection_is_partly_refused_and_the_rest_delivered(
    nursery: trio.Nursery, tmp_path: Path, key_pair: tuple[bytes, Path],
) -> None:
    base = chat_config(tmp_path, f"sqlite:///{tmp_path / 'chat.sqlite3'}", key_pair[1])
    config = replace(base, limits=replace(base.limits, max_send_wait_ms=20,
                                          stomp_max_pending_frames=100_000))
    chat = await start_chat(nursery, config, key_pair[0])
    async with chat.client:
        sid = await chat.init()
        ws = await trio_websocket.connect_websocket(
            nursery, "127.0.0.1", chat.port, "/ws", use_ssl=False, subprotocols=["v12.stomp"])
        peer = Peer(websocket_stream(ws))  # type: ignore[arg-type]
        await peer.connect(Authorization=f"Bearer {chat.token(ALICE)}")
        for n, destination in enumerate(("/user/queue/ack", "/user/queue/error",
                                         f"/topic/session.{sid}")):
            await peer.subscribe(destination, str(n))
        # all of it in one write: the frames wait behind each other in the server
        await peer.send_many([
            ("SEND", {"destination": "/app/chat.send", "content-type": "application/json"},
             json.dumps({"sessionId": sid, "content": f"m{i}", "clientMessageId": f"f{i}"}
                        ).encode())
            for i in range(FLOOD)])
        acked: list[str] = []
        refused: list[dict[str, object]] = []
        topic: list[dict[str, object]] = []
        with trio.fail_after(60):
            while len(acked) + len(refused) < FLOOD or len(topic) < len(acked):
                frame = await peer.frame()
                assert frame.command == "MESSAGE", frame
                body = json.loads(frame.body)
                {"0": acked, "1": refused, "2": topic}[frame.get("subscription") or ""].append(
                    body["clientMessageId"] if frame.get("subscription") == "0" else body)
        assert refused, "nothing was refused: the flood did not overload a 20 ms wait"
        assert acked, "nothing was stored"
        assert {r["status"] for r in refused} == {"SERVICE_UNAVAILABLE"}
        assert all(r["retryAfter"] for r in refused)
        # what was acknowledged is stored once, in the order sent, and went out in order
        stored = [m["clientMessageId"] for m in sorted(
            await chat.history(sid), key=lambda m: m["seq"])] if len(acked) <= 100 else None
        order = [int(c[1:]) for c in acked]
        assert order == sorted(order)
        assert [m["clientMessageId"] for m in topic] == acked
        assert [m["seq"] for m in topic] == list(range(1, len(acked) + 1))
        if stored is not None:
            assert stored == acked
        assert not set(acked) & {r["clientMessageId"] for r in refused}
    chat.scope.cancel()
