"""Shared fixtures: real services, a fresh database and vhost per test run or per test.

Under CI=true a service that is not reachable fails the test; elsewhere it skips it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from collections.abc import Iterator
from typing import NoReturn

import pytest

PG_ADMIN_URL = os.environ.get("CHATD_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
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
        unavailable(f"{name} is not reachable on {address[0]}:{address[1]} "
                    "(scripts/services starts it)")


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
