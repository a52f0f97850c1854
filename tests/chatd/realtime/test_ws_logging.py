"""Log lines of a STOMP-over-WebSocket session carry its handshake's request id, and the
access log can be switched off."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import trio
import trio_websocket

from chatd.config import LoggingConfig
from chatd.observability.logs import JsonFormatter
from stomp.trio import websocket_stream

from ...stomp.stomp_peer import Peer
from .conftest import Chat, chat_config, start_chat

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """Every record of the stomp and chatd loggers, as the JSON formatter writes it."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    loggers = [logging.getLogger(name) for name in ("stomp", "chatd")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.DEBUG)
    yield out
    for lg, level in zip(loggers, levels, strict=True):
        lg.removeHandler(handler)
        lg.setLevel(level)


def records(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


async def test_stomp_session_lines_carry_the_handshake_request_id(
    sqlite_chat: Chat, nursery: trio.Nursery, json_lines: io.StringIO
) -> None:
    connection = await trio_websocket.connect_websocket(
        nursery,
        "127.0.0.1",
        sqlite_chat.port,
        "/ws",
        use_ssl=False,
        subprotocols=["v12.stomp"],
        extra_headers=[(b"X-Request-ID", b"ws-trace-7")],
    )
    peer = Peer(websocket_stream(connection))  # type: ignore[arg-type]
    await peer.send("CONNECT", {"accept-version": "1.2", "host": "localhost"})  # no token
    # The refusal is logged before its ERROR is queued: no waiting needed.
    assert (await peer.frame()).get("message") == "unauthenticated"
    refused = [r for r in records(json_lines) if "refused" in str(r["event"])]
    assert refused, records(json_lines)
    assert {r.get("request_id") for r in refused} == {"ws-trace-7"}


@pytest.mark.parametrize("enabled", [True, False])
async def test_access_log_switch(
    nursery: trio.Nursery,
    tmp_path: Path,
    key_pair: tuple[bytes, Path],
    json_lines: io.StringIO,
    enabled: bool,
) -> None:
    config = chat_config(tmp_path, f"sqlite:///{tmp_path / 'c.sqlite3'}", key_pair[1])
    config = replace(config, logging=LoggingConfig(access_log=enabled))
    chat = await start_chat(nursery, config, key_pair[0])
    async with chat.client:
        await chat.client.get("/api/chat/sessions", headers={"X-Request-ID": "acc-1"})
    chat.scope.cancel()
    access = [r for r in records(json_lines) if r["logger"] == "chatd.access"]
    if enabled:
        assert [(r["path"], r["status"], r["request_id"]) for r in access] == [
            ("/api/chat/sessions", 401, "acc-1")
        ]
    else:
        assert access == []
