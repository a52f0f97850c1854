"""The services a soak run breaks, all private to the run: a PostgreSQL cluster, a RabbitMQ
node (both from the fault tests' `tests.chatd.bridge.services`, the one home of how to start
them), a redis-server, and a TCP proxy between one chatd instance and RabbitMQ that can be cut.

The shared services on 5432/5672/6379 are never touched: a fault stops or cuts these copies.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

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
