"""Send benchmark (issue 3): N clients POST ``/api/chat/message`` for T seconds against
``chatd serve`` on a fresh PostgreSQL database, then pgbench runs the same insert transaction
(`bench.pgbench`) on that database; sends/s, p50/p99 and the ratio.

chatd runs pinned to core 0 (like the broker), the HTTP load and pgbench on core 1; PostgreSQL
is a system service and is not pinned. Each client is its own user with its own session, so
senders never wait on one another's session row lock. The HTTP client is a minimal keep-alive
HTTP/1.1 client over raw trio sockets.
"""

from __future__ import annotations

import json
import re
import socket
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import trio

from bench.broker import percentiles
from bench.chatd_serve import POOL_SIZE, chatd_deployment, tokens_for
from bench.pgbench import run_pgbench
from bench.targets import cpu_seconds, self_cpu

Result = dict[str, Any]
_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)


class HttpClient:
    """One keep-alive HTTP/1.1 connection; JSON requests with a bearer token."""

    def __init__(self, stream: trio.SocketStream, host: str, token: str) -> None:
        self.stream = stream
        self.head = f"Host: {host}\r\nAuthorization: Bearer {token}\r\n".encode()
        self.buf = b""

    @classmethod
    async def open(cls, host: str, port: int, token: str) -> HttpClient:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await sock.connect((host, port))
        return cls(trio.SocketStream(sock), f"{host}:{port}", token)

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        return await self.request("POST", path, body)

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        await self.stream.send_all(
            b"%s %s HTTP/1.1\r\n%sContent-Type: application/json\r\nContent-Length: %d"
            b"\r\n\r\n%s" % (method.encode(), path.encode(), self.head, len(body), body)
        )
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            await self._fill()
        head = self.buf[:end]
        match = _LENGTH.search(head)
        if match is None:
            raise RuntimeError(f"response without content-length: {head[:200]!r}")
        total = end + 4 + int(match.group(1))
        while len(self.buf) < total:
            await self._fill()
        payload, self.buf = self.buf[end + 4 : total], self.buf[total:]
        return int(head[9:12]), payload

    async def _fill(self) -> None:
        data = await self.stream.receive_some(65536)
        if not data:
            raise RuntimeError("the server closed the connection")
        self.buf += data

    async def aclose(self) -> None:
        await self.stream.aclose()


async def _load(
    host: str,
    port: int,
    tokens: list[str],
    sessions: list[str],
    *,
    warmup: float,
    seconds: float,
    server_pid: int,
) -> Result:
    """Every client sends back to back; counted after `warmup`, for `seconds`."""
    run = uuid.uuid4().hex[:8]
    latencies: list[int] = []
    statuses: Counter[int] = Counter()
    measuring = trio.Event()
    clients = [await HttpClient.open(host, port, t) for t in tokens]

    async def client(i: int) -> None:
        http, session, k = clients[i], sessions[i], 0
        while True:
            k += 1
            body = json.dumps(
                {
                    "sessionId": session,
                    "content": f"bench message {i}/{k}",
                    "clientMessageId": f"{run}-{i}-{k}",
                }
            ).encode()
            t0 = time.monotonic_ns()
            status, _ = await http.post("/api/chat/message", body)
            if measuring.is_set():
                latencies.append(time.monotonic_ns() - t0)
                statuses[status] += 1

    try:
        async with trio.open_nursery() as nursery:
            for i in range(len(clients)):
                nursery.start_soon(client, i)
            await trio.sleep(warmup)
            t0, g0, s0 = time.monotonic(), self_cpu(), cpu_seconds(server_pid)
            measuring.set()
            await trio.sleep(seconds)
            wall = time.monotonic() - t0
            ok = statuses[201]
            result: Result = {
                "clients": len(clients),
                "sends_per_s": round(ok / wall),
                "errors": sum(statuses.values()) - ok,
                "statuses": {str(k): v for k, v in statuses.items()},
                **percentiles(list(latencies)),
                "seconds": round(wall, 2),
                "gen_cpu_pct": round(100 * (self_cpu() - g0) / wall, 1),
                "server_cpu_pct": round(100 * (cpu_seconds(server_pid) - s0) / wall, 1),
            }
            nursery.cancel_scope.cancel()
    finally:
        for http in clients:
            await http.aclose()
    return result


async def init_sessions(
    host: str, port: int, tokens: list[str], peers: list[str], intent: str = "bench"
) -> list[str]:
    """One session per (token's user, peer), created through ``/api/chat/init``."""
    sessions: list[str] = []
    for token, peer in zip(tokens, peers, strict=True):
        http = await HttpClient.open(host, port, token)
        try:
            body = json.dumps({"toEmail": peer, "intent": intent}).encode()
            status, answer = await http.post("/api/chat/init", body)
        finally:
            await http.aclose()
        if status != 200:
            raise RuntimeError(f"/api/chat/init answered {status}: {answer[:200]!r}")
        sessions.append(json.loads(answer)["sessionId"])
    return sessions


def send_benchmark(
    workdir: Path, *, clients: int, seconds: float, warmup: float, say: Any = print
) -> Result:
    """The whole send benchmark in a database created for it and dropped afterwards."""
    with chatd_deployment(workdir, say=say) as deployment:
        server = deployment.instances[0]
        tokens = tokens_for(deployment.data_dir, [f"bench{i}@example.com" for i in range(clients)])
        sessions = trio.run(
            init_sessions,
            server.host,
            server.port,
            tokens,
            [f"peer{i}@example.com" for i in range(clients)],
        )
        say(f"  {clients} clients POST /api/chat/message for {seconds:g} s")
        http = trio.run(
            lambda: _load(
                server.host,
                server.port,
                tokens,
                sessions,
                warmup=warmup,
                seconds=seconds,
                server_pid=server.pid,
            )
        )
        say(f"  pgbench: the same transaction, {POOL_SIZE} connections (chatd's pool size)")
        pg = run_pgbench(deployment.database_url, workdir, clients=POOL_SIZE, seconds=seconds)
    ratio = http["sends_per_s"] / pg["tps"] if pg.get("tps") else None
    return {
        "http": http,
        "pgbench": pg,
        "ratio_pct": None if ratio is None else round(100 * ratio, 1),
    }
