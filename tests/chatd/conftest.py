"""Fixtures for the chatd tests: a `store` over every storage backend.

The storage contract suite runs once per backend: PostgreSQL on the run's fresh database
(emptied before each test, the schema kept) and SQLite on a file in `tmp_path`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chatd.storage import Store, open_store

BACKENDS = ["postgres", "sqlite"]
_TABLES = "chat_message_outbox, chat_messages, chat_sessions"


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
async def store(store_url: str) -> AsyncIterator[Store]:
    """An open, migrated store with no sessions, messages or outbox rows."""
    async with open_store(store_url, pool_size=10) as opened:
        await opened.migrate()
        yield opened
