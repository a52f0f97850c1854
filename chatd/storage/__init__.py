"""Storage: the `Store` protocol, its PostgreSQL and SQLite backends, schema migrations.

`open_store(url)` picks the backend by URL scheme; `store_from_config` reads ``[database]``.
Backends are imported lazily so the SQLite path never loads psycopg. ``chatd migrate`` and
the start of ``chatd serve`` open and migrate the store through `chatd.startup.database`,
which turns the errors below into the line an operator reads.
"""

from __future__ import annotations

from typing import Protocol

from chatd.storage.base import OpenError, Store, open_store
from chatd.storage.migrate import MigrationError, SchemaError, UnknownMigrations

__all__ = [
    "MigrationError",
    "OpenError",
    "SchemaError",
    "Store",
    "UnknownMigrations",
    "open_store",
    "store_from_config",
]


class _DatabaseSettings(Protocol):
    """What we read from ``chatd.config.DatabaseConfig`` (not imported: config is another layer)."""

    @property
    def url(self) -> str: ...

    @property
    def pool_size(self) -> int: ...

    @property
    def connect_timeout(self) -> float: ...

    @property
    def pool_timeout(self) -> float: ...

    @property
    def statement_timeout(self) -> float: ...


def store_from_config(database: _DatabaseSettings) -> Store:
    """A not-yet-opened store for a ``[database]`` section."""
    return open_store(
        database.url,
        pool_size=database.pool_size,
        connect_timeout=database.connect_timeout,
        pool_timeout=database.pool_timeout,
        statement_timeout=database.statement_timeout,
    )
