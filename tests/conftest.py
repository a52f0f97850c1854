"""Shared fixtures: real services, a fresh database, vhost or Redis key prefix per test run or
per test, and a private redis-server a test may break.

Under CI=true a service that is not reachable fails the test; elsewhere it skips it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

PG_ADMIN_URL = os.environ.get(
    "CHATD_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
RABBITMQ_HOST = ("127.0.0.1", 5672)
IN_CI = os.environ.get("CI", "").lower() == "true"
RUN_ID = uuid.uuid4().hex[:10]


def _reachable(address: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(address, timeout=2):
            return True
    except OSError:
        return False


def unavailable(message: str) -> NoReturn:
    """Skip (locally) or fail (in CI) a test whose environment lacks what it needs."""
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def require_service(name: str, address: tuple[str, int]) -> None:
    """Skip (locally) or fail (in CI) when a service the test needs is not reachable."""
    if not _reachable(address):
        unavailable(
            f"{name} is not reachable on {address[0]}:{address[1]} (scripts/services starts it)"
        )


def admin_sql(sql: str, url: str = PG_ADMIN_URL) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.encode())


def rabbitmqctl(*args: str, node: str | None = None) -> str:
    cmd = ["rabbitmqctl", *(["-n", node] if node else []), *args]
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60).stdout


@pytest.fixture
def database_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    require_service("PostgreSQL", ("127.0.0.1", 5432))
    name = f"chatd_test_{uuid.uuid4().hex[:10]}"
    admin_sql(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    finally:
        admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def vhost() -> Iterator[str]:
    """A fresh vhost on the shared RabbitMQ (guest has every right) for one test; its name."""
    require_service("RabbitMQ", RABBITMQ_HOST)
    name = f"chatd_test_{uuid.uuid4().hex[:10]}"
    rabbitmqctl("add_vhost", name)
    rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    try:
        yield name
    finally:
        subprocess.run(["rabbitmqctl", "delete_vhost", name], capture_output=True, check=False)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test run, dropped afterwards."""
    import psycopg

    require_service("PostgreSQL", ("127.0.0.1", 5432))
    name = f"chatd_test_{RUN_ID}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def rabbitmq_url() -> Iterator[str]:
    """A fresh RabbitMQ vhost for this test run (guest has full rights), deleted afterwards."""
    require_service("RabbitMQ", RABBITMQ_HOST)
    vhost = f"chatd_test_{RUN_ID}"
    subprocess.run(["rabbitmqctl", "add_vhost", vhost], check=True, capture_output=True)
    subprocess.run(
        ["rabbitmqctl", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
        check=True,
        capture_output=True,
    )
    try:
        yield f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    finally:
        subprocess.run(["rabbitmqctl", "delete_vhost", vhost], capture_output=True)


REDIS_HOST = ("127.0.0.1", 6379)
REDIS_SERVER = "redis-server"


@pytest.fixture
def redis_url() -> str:
    """The shared Redis (tests keep to their own `redis_prefix`)."""
    require_service("Redis", REDIS_HOST)
    return f"redis://{REDIS_HOST[0]}:{REDIS_HOST[1]}/0"


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of one test on the shared Redis; its keys are deleted afterwards."""
    import redis

    prefix = f"chatd_test_{uuid.uuid4().hex[:10]}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class PrivateRedis:
    """A redis-server of one test, in its own folder on a free port, that the test may kill,
    pause (SIGSTOP: a Redis that stops answering) and start again on the same port."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which(REDIS_SERVER) or "/usr/bin/redis-server"
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.folder),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not _reachable(("127.0.0.1", self.port)):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"private redis-server did not start on {self.port}")
            time.sleep(0.02)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def pause(self, paused: bool) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP if paused else signal.SIGCONT)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A started `PrivateRedis`, killed afterwards."""
    if shutil.which(REDIS_SERVER) is None and not Path("/usr/bin/redis-server").exists():
        unavailable("redis-server is not installed (apt-get install redis-server)")
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        if server.process is not None and server.process.poll() is None:
            server.pause(False)
        server.kill()
