"""Fixtures for the chatd tests: a `store` over every storage backend, and a PostgreSQL
reached through a proxy that a test can switch off (an outage the shared server never sees).

The storage contract suite runs once per backend: PostgreSQL on the run's fresh database
(emptied before each test, the schema kept) and SQLite on a file in `tmp_path`.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import trio

from chatd.storage import Store, open_store
from tests.conftest import PG_ADMIN_URL, require_service
from tests.proxy import SwitchableProxy as SwitchableProxy

BACKENDS = ["postgres", "sqlite"]
_TABLES = "chat_message_outbox, chat_messages, chat_sessions, chat_user_keys"


def _empty_postgres(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT to_regclass('chat_sessions')").fetchone()
        if row is not None and row[0] is not None:
            conn.execute(f"TRUNCATE {_TABLES} RESTART IDENTITY CASCADE")


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The database URL of one backend, empty of chat data."""
    if request.param == "postgres":
        url: str = request.getfixturevalue("postgres_url")
        _empty_postgres(url)
        return url
    return f"sqlite:///{tmp_path / 'chatd.sqlite3'}"


@pytest.fixture
def private_db() -> Iterator[str]:
    """A uniquely named empty PostgreSQL database of one test (which may break it at will),
    dropped afterwards."""
    import psycopg

    require_service("PostgreSQL", ("127.0.0.1", 5432))
    name = f"chatd_private_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    """An open, migrated store with no sessions, messages or outbox rows."""
    async with open_store(store_url, pool_size=10) as opened:
        await opened.migrate()
        yield opened


@pytest.fixture
async def proxied_pg(nursery: trio.Nursery, postgres_url: str) -> tuple[str, SwitchableProxy]:
    parts = urlsplit(postgres_url)
    proxy = SwitchableProxy((parts.hostname or "127.0.0.1", parts.port or 5432))
    await nursery.start(proxy.run)
    user = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{proxy.port}")), proxy
