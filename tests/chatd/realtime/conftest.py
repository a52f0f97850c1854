"""Fixtures for the real-time tests: the whole chatd (`supervisor.serve`) in the test's
nursery on ephemeral ports, over PostgreSQL or SQLite, with real STOMP clients.

Clients: stomp.py's WebSocket connection (threaded, driven through `trio.to_thread`), a raw
STOMP peer over trio-websocket for the close codes a library hides, and @stomp/stompjs under
Node (test_stompjs.py). Tokens are signed with one key pair made once per run.
"""

from __future__ import annotations

import functools
import json
import queue
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio_websocket

from chatd.auth.keys import ensure_dev_keys
from chatd.auth.tokens import mint_token
from chatd.config import (
    AuthConfig,
    Config,
    DatabaseConfig,
    LimitsConfig,
    OutboxConfig,
    ServerConfig,
)
from chatd.supervisor import serve
from stomp.trio import websocket_stream

from ...stomp.stomp_peer import Peer
from ...stomppy_loader import stomppy

ALICE, BOB, CAROL = "alice@example.com", "bob@example.com", "carol@example.com"
TIMEOUT = 10.0


@pytest.fixture(scope="session")
def key_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, Path]:
    """(private key PEM, public key file)."""
    private, public, _ = ensure_dev_keys(tmp_path_factory.mktemp("keys"))
    return private.read_bytes(), public


@dataclass
class Chat:
    """A running chatd: its URLs, a REST client, tokens; `stop()` asks it to drain."""

    http: str
    tcp: tuple[str, int] | None
    client: httpx.AsyncClient
    private_key: bytes
    scope: trio.CancelScope
    done: trio.Event = field(default_factory=trio.Event)
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def port(self) -> int:
        return int(self.http.rsplit(":", 1)[1])

    @property
    def ws_url(self) -> str:
        return self.http.replace("http://", "ws://") + "/ws"

    def token(self, email: str) -> str:
        if email not in self.tokens:
            self.tokens[email] = mint_token(self.private_key, email)
        return self.tokens[email]

    def auth(self, email: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(email)}"}

    async def init(self, caller: str = ALICE, peer: str = BOB) -> str:
        answer = await self.client.post(
            "/api/chat/init", json={"toEmail": peer, "intent": "buy"}, headers=self.auth(caller)
        )
        assert answer.status_code == 200, answer.text
        sid: str = answer.json()["sessionId"]
        return sid

    async def send(self, sid: str, content: str, cmid: str, caller: str = ALICE) -> dict[str, Any]:
        answer = await self.client.post(
            "/api/chat/message",
            json={"sessionId": sid, "content": content, "clientMessageId": cmid},
            headers=self.auth(caller),
        )
        assert answer.status_code in (200, 201), answer.text
        message: dict[str, Any] = answer.json()
        return message

    async def history(self, sid: str, caller: str = ALICE) -> list[dict[str, Any]]:
        answer = await self.client.get(
            f"/api/chat/{sid}/history", params={"limit": 100}, headers=self.auth(caller)
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        messages: list[dict[str, Any]] = body["messages"] if isinstance(body, dict) else body
        return messages


def chat_config(tmp_path: Path, url: str, public_key: Path, **server: Any) -> Config:
    options: dict[str, Any] = {
        "bind": "127.0.0.1:0",
        "data_dir": tmp_path,
        "shutdown_grace": 4.0,
    } | server
    return Config(
        server=ServerConfig(**options),
        database=DatabaseConfig(url=url, connect_timeout=2),
        auth=AuthConfig(public_key_file=public_key),
        # A loaded CI machine's commit can take longer than the production bound on a send's
        # wait (100 ms), which would refuse sends these tests expect answered; the tests of
        # that bound set it themselves (test_overload).
        limits=LimitsConfig(send_burst=100_000, sends_per_second=100_000, max_send_wait_ms=10_000),
        outbox=OutboxConfig(poll_interval=0.2),
    )


async def start_chat(
    nursery: trio.Nursery,
    config: Config,
    private_key: bytes,
    *,
    handle_signals: bool = False,
    span_exporter: object = None,
) -> Chat:
    """Run `serve(config)` in `nursery`; the returned Chat's scope cancels it."""
    scope = trio.CancelScope()
    done = trio.Event()

    async def run(task_status: trio.TaskStatus[list[str]]) -> None:
        try:
            with scope:
                await serve(
                    config,
                    handle_signals=handle_signals,
                    span_exporter=span_exporter,
                    task_status=task_status,
                )
        finally:
            done.set()

    summaries: list[str] = await nursery.start(run)
    found = dict(s.split("=", 1) for s in summaries)
    tcp = None
    if "stomp" in found:
        host, _, port = found["stomp"].removeprefix("tcp://").rpartition(":")
        tcp = (host, int(port))
    client = httpx.AsyncClient(base_url=found["http"], timeout=30)
    return Chat(found["http"], tcp, client, private_key, scope, done)


@pytest.fixture
async def chat(
    nursery: trio.Nursery, store_url: str, tmp_path: Path, key_pair: tuple[bytes, Path]
) -> AsyncIterator[Chat]:
    """chatd over each backend (PostgreSQL, SQLite)."""
    running = await start_chat(nursery, chat_config(tmp_path, store_url, key_pair[1]), key_pair[0])
    async with running.client:
        yield running
    running.scope.cancel()


@pytest.fixture
async def sqlite_chat(
    nursery: trio.Nursery, tmp_path: Path, key_pair: tuple[bytes, Path]
) -> AsyncIterator[Chat]:
    """chatd over SQLite, for tests where the backend does not matter."""
    url = f"sqlite:///{tmp_path / 'chat.sqlite3'}"
    running = await start_chat(nursery, chat_config(tmp_path, url, key_pair[1]), key_pair[0])
    async with running.client:
        yield running
    running.scope.cancel()


# -- stomp.py over WebSocket -------------------------------------------------------------------


class Recorder(stomppy.ConnectionListener):  # type: ignore[misc]
    """What a stomp.py connection observed, for the test to wait on (from a thread)."""

    def __init__(self) -> None:
        self.messages: dict[str, queue.Queue[Any]] = {}
        self.receipts: set[str] = set()
        self.errors: queue.Queue[Any] = queue.Queue()
        self.disconnected = threading.Event()
        self.connected = threading.Event()
        self._lock = threading.Condition()

    def inbox(self, sub_id: str) -> queue.Queue[Any]:
        with self._lock:
            return self.messages.setdefault(sub_id, queue.Queue())

    def on_connected(self, frame: Any) -> None:
        self.connected.set()

    def on_message(self, frame: Any) -> None:
        self.inbox(frame.headers["subscription"]).put(frame)

    def on_receipt(self, frame: Any) -> None:
        with self._lock:
            self.receipts.add(frame.headers["receipt-id"])
            self._lock.notify_all()

    def on_error(self, frame: Any) -> None:
        self.errors.put(frame)

    def on_disconnected(self) -> None:
        self.disconnected.set()

    def wait_receipt(self, receipt: str) -> None:
        with self._lock:
            ok = self._lock.wait_for(lambda: receipt in self.receipts, TIMEOUT)
        assert ok, f"no RECEIPT {receipt!r}"


class StompPy:
    """One stomp.py WebSocket connection (blocking calls: use `run` from trio tests)."""

    def __init__(
        self, chat: Chat, token: str | None, *, path: str = "/ws", passcode: bool = False
    ) -> None:
        self.conn = stomppy.adapter.ws.WSStompConnection(
            [("127.0.0.1", chat.port)], ws_path=path, reconnect_attempts_max=1, timeout=TIMEOUT
        )
        self.seen = Recorder()
        self.conn.set_listener("recorder", self.seen)
        self.token = token
        self.passcode = passcode
        self._count = 0

    def _next(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}{self._count}"

    def connect(self, *, wait: bool = True) -> None:
        headers = {}
        if self.token is not None and not self.passcode:
            headers["Authorization"] = f"Bearer {self.token}"
        passcode = self.token if self.passcode else None
        self.conn.connect(
            username="x" if passcode else None, passcode=passcode, wait=False, headers=headers
        )
        if wait:
            assert self.seen.connected.wait(TIMEOUT), self.error_texts()

    def subscribe(
        self, destination: str, *, wait: bool = True, ack: str = "auto", **headers: str
    ) -> str:
        sub_id, receipt = self._next("sub-"), self._next("r")
        self.seen.inbox(sub_id)
        self.conn.subscribe(
            destination, id=sub_id, ack=ack, headers={"receipt": receipt, **headers}
        )
        if wait:
            self.seen.wait_receipt(receipt)
        return sub_id

    def send(self, destination: str, body: Any, *, receipt: bool = False) -> None:
        text = body if isinstance(body, str) else json.dumps(body)
        headers = {"content-type": "application/json"}
        rid = None
        if receipt:
            rid = headers["receipt"] = self._next("r")
        self.conn.send(destination, text, headers=headers)
        if rid is not None:
            self.seen.wait_receipt(rid)

    def message(self, sub_id: str, timeout: float = TIMEOUT) -> Any:
        try:
            return self.seen.inbox(sub_id).get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no MESSAGE on {sub_id}; errors: {self.error_texts()}") from None

    def json(self, sub_id: str) -> tuple[dict[str, str], Any]:
        frame = self.message(sub_id)
        return frame.headers, json.loads(frame.body)

    def nothing(self, sub_id: str, wait: float = 0.3) -> None:
        try:
            frame = self.seen.inbox(sub_id).get(timeout=wait)
        except queue.Empty:
            return
        raise AssertionError(f"unexpected MESSAGE {frame.headers} {frame.body!r}")

    def error(self) -> Any:
        """The ERROR frame the server sent, after which it must have closed the connection."""
        frame = self.seen.errors.get(timeout=TIMEOUT)
        assert self.seen.disconnected.wait(TIMEOUT), "the server did not close the connection"
        return frame

    def error_texts(self) -> list[Any]:
        return [(e.headers, e.body) for e in list(self.seen.errors.queue)]

    def close(self) -> None:
        if self.conn.is_connected():
            self.conn.disconnect()


async def run(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call a blocking client method off the trio thread."""
    return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))


async def stomppy_client(chat: Chat, email: str | None, **options: Any) -> StompPy:
    client = StompPy(chat, chat.token(email) if email else None, **options)
    await run(client.connect)
    return client


# -- a raw STOMP peer over trio-websocket ------------------------------------------------------


async def raw_ws_peer(
    nursery: trio.Nursery, chat: Chat, path: str = "/ws"
) -> tuple[Peer, trio_websocket.WebSocketConnection]:
    """A WebSocket connection offering the STOMP subprotocols, wrapped as a frame-level peer
    (the connection is returned too, for its close code)."""
    connection = await trio_websocket.connect_websocket(
        nursery,
        "127.0.0.1",
        chat.port,
        path,
        use_ssl=False,
        subprotocols=["v12.stomp", "v11.stomp", "v10.stomp"],
    )
    return Peer(websocket_stream(connection)), connection  # type: ignore[arg-type]
