"""Fixtures for the several-instances tests: real ``chatd serve`` processes on port 0 sharing a
fresh PostgreSQL database and a fresh RabbitMQ vhost, and STOMP clients that record what they
receive."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio_websocket

from chatd.auth.keys import ensure_dev_keys, load_private_key
from chatd.auth.tokens import mint_token
from stomp import Frame
from stomp.trio import websocket_stream

from ...conftest import admin_sql as admin_sql
from ...conftest import rabbitmqctl as rabbitmqctl
from ...stomp.stomp_peer import Peer
from ...waiting import wait_until

ALICE, BOB = "alice@example.com", "bob@example.com"
READY = re.compile(r"chatd ready .*?\bhttp=http://([\d.]+):(\d+)")
START_TIMEOUT = 30.0


def bindings(vhost: str, node: str | None = None, exchange: str = "chatd.events") -> set[str]:
    """Routing keys bound from `exchange` (chatd's by default) on `vhost`."""
    out = rabbitmqctl(
        "list_bindings",
        "-p",
        vhost,
        "-q",
        "--no-table-headers",
        "source_name",
        "routing_key",
        node=node,
    )
    keys = set()
    for line in out.splitlines():
        source, _, key = line.partition("\t")
        if source == exchange:
            keys.add(key)
    return keys


def _spawn(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as handle:
        return subprocess.Popen(cmd, env=env, stdout=handle, stderr=subprocess.STDOUT)


async def eventually(predicate: Any, seconds: float = 15.0) -> None:
    """Poll `predicate` (state outside trio, e.g. RabbitMQ's bindings) until it is true."""
    await wait_until(predicate, within=seconds, step=0.1)


@dataclass
class Instance:
    """One ``chatd serve`` process; `start()` (again after `kill()`) waits for its ready line."""

    name: str
    env: dict[str, str]
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None
    http: str = ""
    starts: int = 0

    async def start(self) -> None:
        self.starts += 1
        log = self.workdir / f"{self.name}-{self.starts}.log"
        chatd = str(Path(sys.executable).with_name("chatd"))
        self.proc = _spawn(
            [chatd, "serve", "--bind", "127.0.0.1:0", "--data-dir", self.env["DATA_DIR"]],
            self.env,
            log,
        )
        with trio.fail_after(START_TIMEOUT):
            while True:
                match = READY.search(log.read_text(errors="replace"))
                if match:
                    self.http = f"http://{match.group(1)}:{match.group(2)}"
                    return
                if self.proc.poll() is not None:
                    raise AssertionError(f"{self.name} exited: {log.read_text()[-3000:]}")
                await trio.sleep(0.05)

    @property
    def port(self) -> int:
        return int(self.http.rsplit(":", 1)[1])

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@dataclass
class Cluster:
    """Instances sharing one database and one vhost, plus tokens and a REST client."""

    env: dict[str, str]
    workdir: Path
    private_key: Any
    client: httpx.AsyncClient
    instances: list[Instance] = field(default_factory=list)
    tokens: dict[str, str] = field(default_factory=dict)

    async def add(self, **extra_env: str) -> Instance:
        inst = Instance(f"chatd{len(self.instances) + 1}", {**self.env, **extra_env}, self.workdir)
        self.instances.append(inst)
        await inst.start()
        return inst

    def token(self, email: str) -> str:
        if email not in self.tokens:
            self.tokens[email] = mint_token(self.private_key, email, 3600)
        return self.tokens[email]

    def auth(self, email: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(email)}"}

    async def init(self, inst: Instance, caller: str = ALICE, peer: str = BOB) -> str:
        answer = await self.client.post(
            f"{inst.http}/api/chat/init",
            headers=self.auth(caller),
            json={"toEmail": peer, "intent": "buy"},
        )
        assert answer.status_code == 200, answer.text
        return str(answer.json()["sessionId"])

    async def send(
        self, inst: Instance, sid: str, content: str, cmid: str, caller: str = ALICE
    ) -> httpx.Response:
        return await self.client.post(
            f"{inst.http}/api/chat/message",
            headers=self.auth(caller),
            json={"sessionId": sid, "content": content, "clientMessageId": cmid},
        )


@asynccontextmanager
async def open_cluster(
    database_url: str, rabbitmq_url: str, workdir: Path
) -> AsyncIterator[Cluster]:
    """No instance yet: `await cluster.add()`; every instance is stopped on exit."""
    data_dir = workdir / "data"
    data_dir.mkdir()
    private, _, _ = ensure_dev_keys(data_dir)  # before any instance, so all share one key
    env = {
        **os.environ,
        "DATA_DIR": str(data_dir),
        "CHATD_DATABASE_URL": database_url,
        "CHATD_RABBITMQ_URL": rabbitmq_url,
        "CHATD_RABBITMQ__RECONNECT_INITIAL_SECONDS": "0.2",
        "CHATD_RABBITMQ__RECONNECT_MAX_SECONDS": "1",
        "CHATD_RABBITMQ__CONFIRM_TIMEOUT_SECONDS": "2",
        "CHATD_DATABASE__CONNECT_TIMEOUT": "2",
        "CHATD_DATABASE__POOL_TIMEOUT": "2",
        "CHATD_OUTBOX__LEASE_SECONDS": "5",
        "CHATD_OUTBOX__POLL_INTERVAL": "0.2",
        "CHATD_OUTBOX__BACKOFF_BASE": "0.05",
        "CHATD_OUTBOX__BACKOFF_CAP": "0.5",
        "CHATD_LIMITS__SEND_BURST": "1000000",
        "CHATD_LIMITS__SENDS_PER_SECOND": "1000000",
        "CHATD_LIMITS__IDENTICAL_CONTENT": "1000000",
        "CHATD_SERVER__SHUTDOWN_GRACE": "3",
        "CHATD_LOGGING__LEVEL": "INFO",
    }
    env.pop("CHATD_CONFIG", None)
    async with httpx.AsyncClient(timeout=10) as client:
        c = Cluster(env, workdir, load_private_key(private), client)
        try:
            yield c
        finally:
            for inst in c.instances:
                inst.stop()


@pytest.fixture
async def cluster(database_url: str, vhost: str, tmp_path: Path) -> AsyncIterator[Cluster]:
    """Instances on a fresh database and a fresh vhost of the shared services."""
    url = f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    async with open_cluster(database_url, url, tmp_path) as c:
        yield c


@dataclass
class Recorder:
    """A STOMP client on one instance that records every MESSAGE body per subscription."""

    peer: Peer
    ws: trio_websocket.WebSocketConnection
    frames: dict[str, list[Frame]] = field(default_factory=dict)
    receipts: set[str] = field(default_factory=set)
    changed: trio.Event = field(default_factory=trio.Event)
    errors: list[Frame] = field(default_factory=list)

    async def pump(self) -> None:
        while (frame := await self.peer.next_frame()) is not None:
            if frame.command == "MESSAGE":
                self.frames.setdefault(frame.get("subscription") or "", []).append(frame)
            elif frame.command == "RECEIPT":
                self.receipts.add(frame.get("receipt-id") or "")
            elif frame.command == "ERROR":
                self.errors.append(frame)
            self.changed.set()
            self.changed = trio.Event()

    async def subscribe(self, destination: str, sub_id: str) -> None:
        await self.peer.send(
            "SUBSCRIBE", {"destination": destination, "id": sub_id, "receipt": f"sub-{sub_id}"}
        )
        await self.wait(lambda: f"sub-{sub_id}" in self.receipts)

    async def unsubscribe(self, sub_id: str) -> None:
        await self.peer.send("UNSUBSCRIBE", {"id": sub_id, "receipt": f"unsub-{sub_id}"})
        await self.wait(lambda: f"unsub-{sub_id}" in self.receipts)

    async def send_json(self, destination: str, body: Any) -> None:
        await self.peer.send(
            "SEND",
            {"destination": destination, "content-type": "application/json"},
            json.dumps(body).encode(),
        )

    def bodies(self, sub_id: str) -> list[Any]:
        return [json.loads(f.body) for f in self.frames.get(sub_id, [])]

    async def wait(self, condition: Any, seconds: float = 15.0) -> None:
        with trio.fail_after(seconds):
            while not condition():
                assert not self.errors, [(e.get("message"), e.body) for e in self.errors]
                await self.changed.wait()


async def recorder(nursery: trio.Nursery, cluster: Cluster, inst: Instance, email: str) -> Recorder:
    ws = await trio_websocket.connect_websocket(
        nursery, "127.0.0.1", inst.port, "/ws", use_ssl=False, subprotocols=["v12.stomp"]
    )
    peer = Peer(websocket_stream(ws))  # type: ignore[arg-type]
    await peer.connect(Authorization=f"Bearer {cluster.token(email)}")
    rec = Recorder(peer, ws)
    nursery.start_soon(rec.pump)
    return rec
