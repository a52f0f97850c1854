"""Storage: the `Store` protocol, its PostgreSQL and SQLite backends, schema migrations.

`open_store(url)` picks the backend by URL scheme; `store_from_config` reads ``[database]``;
`migrate(config)` is what ``chatd migrate`` runs. Backends are imported lazily so the SQLite
path never loads psycopg.

Note: the `migrate` *function* below shadows the `chatd.storage.migrate` submodule as an
attribute of this package; import from the submodule with ``from chatd.storage.migrate import
...`` (which always resolves the module), never ``import chatd.storage.migrate as m``.
"""

from __future__ import annotations

from typing import Any, Protocol

from chatd.storage.base import OpenError, Store, open_store

# importing the submodule here, before `def migrate` below rebinds the name, keeps the
# function as the package attribute for good
from chatd.storage.migrate import MigrationError, SchemaError, UnknownMigrations

__all__ = ["MigrationError", "OpenError", "SchemaError", "Store", "UnknownMigrations", "migrate",
           "open_store", "store_from_config"]


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


class _HasDatabase(Protocol):
    @property
    def database(self) -> _DatabaseSettings: ...


def store_from_config(database: _DatabaseSettings) -> Store:
    """A not-yet-opened store for a ``[database]`` section."""
    return open_store(
        database.url,
        pool_size=database.pool_size,
        connect_timeout=database.connect_timeout,
        pool_timeout=database.pool_timeout,
        statement_timeout=database.statement_timeout,
    )


async def migrate(config: _HasDatabase | str, **opts: Any) -> list[str]:
    """Open the configured database (a Config or a URL), apply pending migrations, close it.

    Returns the names of the migrations applied; raises Unavailable if the database is down and
    SchemaError if it was migrated by a newer chatd.
    """
    store = open_store(config, **opts) if isinstance(config, str) else store_from_config(
        config.database
    )
    async with store:
        return await store.migrate()

