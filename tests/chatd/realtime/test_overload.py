"""Overload is refused, never queued without bound (issue 11): a client that pipelines sends
faster than chatd stores them gets the ones it could not store in time refused at once (an
error with `retryAfter` on /user/queue/error), and every send it was told was stored is
stored once and delivered in order."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import trio
import trio_websocket

from stomp.trio import websocket_stream

from ...stomp.stomp_peer import Peer
from .conftest import ALICE, chat_config, start_chat

FLOOD = 1500


async def test_a_flood_on_one_connection_is_partly_refused_and_the_rest_delivered(
    nursery: trio.Nursery,
    tmp_path: Path,
    key_pair: tuple[bytes, Path],
) -> None:
    base = chat_config(tmp_path, f"sqlite:///{tmp_path / 'chat.sqlite3'}", key_pair[1])
    # The production bound: a loaded machine can take more than 20 ms to schedule the
    # committer's first batch behind the reader, and then every send was refused.
    config = replace(
        base, limits=replace(base.limits, max_send_wait_ms=100, stomp_max_pending_frames=100_000)
    )
    chat = await start_chat(nursery, config, key_pair[0])
    async with chat.client:
        sid = await chat.init()
        ws = await trio_websocket.connect_websocket(
            nursery, "127.0.0.1", chat.port, "/ws", use_ssl=False, subprotocols=["v12.stomp"]
        )
        peer = Peer(websocket_stream(ws))  # type: ignore[arg-type]
        await peer.connect(Authorization=f"Bearer {chat.token(ALICE)}")
        for n, destination in enumerate(
            ("/user/queue/ack", "/user/queue/error", f"/topic/session.{sid}")
        ):
            await peer.subscribe(destination, str(n))
        # all of it in one write: the frames wait behind each other in the server
        await peer.send_many(
            [
                (
                    "SEND",
                    {"destination": "/app/chat.send", "content-type": "application/json"},
                    json.dumps(
                        {"sessionId": sid, "content": f"m{i}", "clientMessageId": f"f{i}"}
                    ).encode(),
                )
                for i in range(FLOOD)
            ]
        )
        acked: list[str] = []
        refused: list[dict[str, object]] = []
        topic: list[dict[str, object]] = []
        with trio.fail_after(60):
            while len(acked) + len(refused) < FLOOD or len(topic) < len(acked):
                frame = await peer.frame()
                assert frame.command == "MESSAGE", frame
                body = json.loads(frame.body)
                {"0": acked, "1": refused, "2": topic}[frame.get("subscription") or ""].append(
                    body["clientMessageId"] if frame.get("subscription") == "0" else body
                )
        assert refused, "nothing was refused: the flood did not overload a 100 ms wait"
        assert acked, "nothing was stored"
        assert {r["status"] for r in refused} == {"SERVICE_UNAVAILABLE"}
        assert all(r["retryAfter"] for r in refused)
        # what was acknowledged is stored once, in the order sent, and went out in order
        stored = (
            [m["clientMessageId"] for m in sorted(await chat.history(sid), key=lambda m: m["seq"])]
            if len(acked) <= 100
            else None
        )
        order = [int(c[1:]) for c in acked]
        assert order == sorted(order)
        assert [m["clientMessageId"] for m in topic] == acked
        assert [m["seq"] for m in topic] == list(range(1, len(acked) + 1))
        if stored is not None:
            assert stored == acked
        assert not set(acked) & {r["clientMessageId"] for r in refused}
        # the operator sees each refusal, labelled with its reason
        metrics = (await chat.client.get("/metrics")).text  # type: ignore[attr-defined]
        busy = {
            m.group(1): float(m.group(2))
            for m in re.finditer(
                r'^chatd_sends_refused_busy_total\{reason="(\w+)"\} (\S+)$', metrics, re.MULTILINE
            )
        }
        assert set(busy) == {"queue", "backlog", "late"}
        assert sum(busy.values()) == len(refused)
    chat.scope.cancel()


async def _batches(chat: object) -> float:
    answer = await chat.client.get("/metrics")  # type: ignore[attr-defined]
    match = re.search(r"^chatd_send_batches_total (\S+)$", answer.text, re.MULTILINE)
    assert match, answer.text[:500]
    return float(match.group(1))


async def test_sends_pipelined_on_one_connection_are_stored_together_and_answered_in_order(
    nursery: trio.Nursery,
    sqlite_chat: object,
) -> None:
    chat = sqlite_chat
    sid = await chat.init()  # type: ignore[attr-defined]
    ws = await trio_websocket.connect_websocket(
        nursery,
        "127.0.0.1",
        chat.port,
        "/ws",
        use_ssl=False,  # type: ignore[attr-defined]
        subprotocols=["v12.stomp"],
    )
    peer = Peer(websocket_stream(ws))  # type: ignore[arg-type]
    await peer.connect(Authorization=f"Bearer {chat.token(ALICE)}")  # type: ignore[attr-defined]
    await peer.subscribe("/user/queue/ack", "0")
    before = await _batches(chat)
    count = 200
    await peer.send_many(
        [
            (
                "SEND",
                {
                    "destination": "/app/chat.send",
                    "content-type": "application/json",
                    "receipt": f"r{i}",
                },
                json.dumps(
                    {"sessionId": sid, "content": f"m{i}", "clientMessageId": f"p{i}"}
                ).encode(),
            )
            for i in range(count)
        ]
    )
    seen: list[str] = []
    with trio.fail_after(30):
        while len(seen) < 2 * count:
            frame = await peer.frame()
            if frame.command == "MESSAGE":
                seen.append("ack " + json.loads(frame.body)["clientMessageId"][1:])
            else:
                assert frame.command == "RECEIPT", frame
                seen.append("receipt " + (frame.get("receipt-id") or "")[1:])
    # each send's ack, then its receipt, in the order sent
    assert seen == [f"{kind} {i}" for i in range(count) for kind in ("ack", "receipt")]
    # the connection did not wait for each commit before reading its next frame
    assert await _batches(chat) - before < count / 4
