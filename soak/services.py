"""The services a soak run breaks, all private to the run: a PostgreSQL cluster, a RabbitMQ
node (both from the fault tests' `tests.chatd.bridge.services`, the one home of how to start
them), a redis-server, and a TCP proxy between one chatd instance and RabbitMQ that can be cut.

The shared services on 5432/5672/6379 are never touched: a fault stops or cuts these copies.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import trio

from tests.chatd.bridge.services import (
    PrivatePostgres as PrivatePostgres,
)
from tests.chatd.bridge.services import (
    PrivateRabbit as PrivateRabbit,
)
from tests.chatd.bridge.services import (
    free_port as free_port,
)
from tests.chatd.bridge.services import (
    service_root as service_root,
)

REDIS_SERVER = "/usr/bin/redis-server"


class PrivateRedis:
    """A redis-server of our own on a free port, no persistence; stopped and started again by
    the Redis fault."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        log = (self.root / "redis.log").open("ab")
        self.proc = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.root),
            ],
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                import socket

                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not listen on {self.port}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class CuttableProxy:
    """A TCP forwarder to `target`. `cut()` drops every link and closes new ones at once (an
    instance cut off RabbitMQ while RabbitMQ itself stays up); `mend()` lets them through."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.up = True
        self.port = 0
        self._links: set[trio.CancelScope] = set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    def cut(self) -> None:
        self.up = False
        for scope in list(self._links):
            scope.cancel()

    def mend(self) -> None:
        self.up = True

    async def _handle(self, client: trio.SocketStream) -> None:
        async with client:
            if not self.up:
                return
            with trio.CancelScope() as scope:
                self._links.add(scope)
                try:
                    upstream = await trio.open_tcp_stream(*self.target)
                    async with upstream, trio.open_nursery() as nursery:
                        nursery.start_soon(self._pump, client, upstream, nursery)
                        nursery.start_soon(self._pump, upstream, client, nursery)
                except OSError:
                    return
                finally:
                    self._links.discard(scope)

    @staticmethod
    async def _pump(src: trio.SocketStream, dst: trio.SocketStream, nursery: trio.Nursery) -> None:
        try:
            while data := await src.receive_some(65536):
                await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        nursery.cancel_scope.cancel()
