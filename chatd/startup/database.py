"""Opening and migrating the store at start: a bounded wait for PostgreSQL, then one clear
error (`StartupError`) naming the database, the cause and the setting to fix."""

from __future__ import annotations

import logging
import os
from urllib.parse import urlsplit

import trio

from chatd.config import Config, DatabaseConfig
from chatd.domain.errors import Unavailable
from chatd.startup import EXIT_CONFIG, StartupError, sentence
from chatd.storage import MigrationError, OpenError, Store, UnknownMigrations, store_from_config

log = logging.getLogger("chatd.startup")

FIRST_RETRY = 0.5  # seconds before the second try; doubles up to MAX_RETRY
MAX_RETRY = 5.0
DATABASE_SETTING = "[database] url or CHATD_DATABASE_URL"


def database_where(database: DatabaseConfig) -> str:
    """Where the database is, without credentials: ``host:port/name`` or the SQLite file."""
    if database.sqlite_path is not None:
        return str(database.sqlite_path)
    parts = urlsplit(database.url)
    host = parts.hostname or os.environ.get("PGHOST") or "localhost"
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{parts.port or 5432}{parts.path or '/'}"


def open_failed(exc: OpenError, database: DatabaseConfig, *, waited: bool = True) -> StartupError:
    """`exc` as the line to print; `waited` says whether ``startup_timeout`` was spent."""
    where, cause = database_where(database), sentence(exc.cause)
    if exc.reason == "login":
        return StartupError(
            "database",
            "cannot log in to the database at",
            where,
            cause,
            f"check the user and password in {DATABASE_SETTING}",
            exit_code=EXIT_CONFIG,
        )
    if exc.reason == "no-database":
        name = urlsplit(database.url).path.lstrip("/")
        return StartupError(
            "database",
            "cannot open the database at",
            where,
            cause,
            f"create it with createdb {name}, or fix the name in {DATABASE_SETTING}",
            exit_code=EXIT_CONFIG,
        )
    if exc.reason == "file":
        return StartupError(
            "database",
            "cannot open the database file",
            where,
            cause,
            f"set --data-dir or {DATABASE_SETTING} to a writable place",
            exit_code=EXIT_CONFIG,
        )
    timeout = database.startup_timeout
    waited_text = f"gave up after {timeout:g} s" if waited and timeout else "tried once"
    return StartupError(
        "database",
        "cannot connect to the database at",
        where,
        cause,
        f"{waited_text}: is PostgreSQL running there? check {DATABASE_SETTING}"
        ", or raise [database] startup_timeout",
    )


async def open_store(config: Config) -> Store:
    """The configured store, opened. PostgreSQL that cannot be reached yet is tried again
    (backing off to every `MAX_RETRY` s, one warning per try) for up to ``[database]
    startup_timeout`` seconds; a refused login or a missing database fails at once.

    Raises `StartupError`.
    """
    database = config.database
    deadline = trio.current_time() + database.startup_timeout
    delay = FIRST_RETRY
    while True:
        store = store_from_config(database)
        try:
            await store.open()
            return store
        except OpenError as exc:
            now = trio.current_time()
            if not exc.transient or now >= deadline:
                raise open_failed(exc, database) from exc
            wait = min(delay, deadline - now)
            where, cause = database_where(database), sentence(exc.cause)
            log.warning(
                "database at %s not reachable: %s; next try in %.1f s (giving up in %.0f s)",
                where,
                cause,
                wait,
                deadline - now,
                extra={
                    "part": "database",
                    "address": where,
                    "cause": cause,
                    "retry_in": round(wait, 3),
                },
            )
            await trio.sleep(wait)
            delay = min(2 * delay, MAX_RETRY)


def lost_database(exc: Unavailable, database: DatabaseConfig) -> StartupError:
    """The line for a database that went away after the connect."""
    cause = sentence(str(exc.__cause__ or exc.message).splitlines()[0])
    return StartupError(
        "database",
        "lost the database at",
        database_where(database),
        cause,
        "try again once it is back",
    )


def newer_schema(exc: UnknownMigrations, database: DatabaseConfig) -> StartupError:
    """The line for a database that a newer chatd migrated."""
    return StartupError(
        "database",
        "cannot use the database at",
        database_where(database),
        exc.message,
        "it was migrated by a newer chatd: run that release or a later one, or restore a backup",
    )


async def migrate_store(store: Store, database: DatabaseConfig) -> list[str]:
    """Apply pending migrations; return their names. Raises `StartupError` when the
    database was migrated by a newer chatd, a migration fails, or the database goes away."""
    where = database_where(database)
    try:
        return await store.migrate()
    except UnknownMigrations as exc:
        raise newer_schema(exc, database) from exc
    except MigrationError as exc:
        raise StartupError(
            "migrations",
            "cannot migrate the database at",
            where,
            exc.message,
            "nothing was applied, the run is one transaction: fix what the "
            "migration trips on, then start again",
        ) from exc
    except Unavailable as exc:
        raise lost_database(exc, database) from exc


__all__ = [
    "DATABASE_SETTING",
    "database_where",
    "lost_database",
    "migrate_store",
    "newer_schema",
    "open_failed",
    "open_store",
]
