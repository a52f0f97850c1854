"""Numbered schema migrations, shared by both backends.

Migrations are SQL files ``migrations/<backend>/NNNN_name.sql`` shipped as package data. The
``schema_migrations`` table records the applied versions. The logic here is synchronous and
backend-neutral: a backend hands in a `MigrationTarget` bound to one open transaction (inside its
worker thread), so a whole `apply` commits or rolls back at once and concurrent migrators are
serialized by the backend's own lock (an advisory lock in PostgreSQL, the write lock in SQLite).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Literal, Protocol

from chatd.domain.errors import Unavailable

Backend = Literal["postgres", "sqlite"]

_FILE = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")


class SchemaError(Unavailable):
    """The database schema does not match this build (pending or unknown migrations).

    It is an `Unavailable`: the store must not serve until ``chatd migrate`` has run.
    """


class UnknownMigrations(SchemaError):
    """The database holds migrations this build does not know: a newer chatd migrated it."""


class MigrationError(Unavailable):
    """A migration failed; nothing of this run is kept (it is one transaction)."""


@dataclass(frozen=True, slots=True)
class Migration:
    """One migration file: `version` from its number, `name` its file stem."""

    version: int
    name: str
    sql: str


class MigrationTarget(Protocol):
    """A database connection inside an open transaction, as seen by the migrator."""

    def applied(self) -> dict[int, str] | None:
        """Applied versions and names, or None when ``schema_migrations`` does not exist."""
        ...

    def ensure_table(self) -> None:
        """Create ``schema_migrations`` if it is missing."""
        ...

    def run(self, migration: Migration) -> None:
        """Execute the migration's SQL and record it in ``schema_migrations``."""
        ...


def available(backend: Backend) -> list[Migration]:
    """The migrations shipped for `backend`, in version order.

    Raises RuntimeError on a malformed file name or a repeated version, a packaging mistake
    that must never reach a database.
    """
    folder = resources.files("chatd.storage").joinpath("migrations", backend)
    found: dict[int, Migration] = {}
    for entry in folder.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = _FILE.fullmatch(entry.name)
        if match is None:
            raise RuntimeError(f"bad migration file name: {backend}/{entry.name}")
        version = int(match.group(1))
        if version in found:
            raise RuntimeError(f"two migrations with version {version} for {backend}")
        found[version] = Migration(version, entry.name[:-4], entry.read_text("utf-8"))
    return [found[v] for v in sorted(found)]


def _refuse_unknown(applied: dict[int, str], shipped: list[Migration]) -> None:
    known = {m.version for m in shipped}
    unknown = [f"{v:04d} ({name})" for v, name in sorted(applied.items()) if v not in known]
    if unknown:
        raise UnknownMigrations(
            f"database has migrations this chatd does not know: {', '.join(unknown)}"
        )


def apply_migrations(target: MigrationTarget, backend: Backend) -> list[str]:
    """Apply every pending migration through `target`; return the names applied, in order.

    Idempotent: an up-to-date database gets nothing. Raises SchemaError when the database holds
    migrations this build does not know (it was migrated by a newer chatd), MigrationError
    naming the migration whose SQL failed (the caller's transaction then rolls it all back).
    """
    shipped = available(backend)
    target.ensure_table()
    applied = target.applied() or {}
    _refuse_unknown(applied, shipped)
    names = []
    for migration in shipped:
        if migration.version not in applied:
            try:
                target.run(migration)
            except Exception as exc:  # the driver's error, whatever the backend
                first_line = (str(exc).strip() or type(exc).__name__).splitlines()[0]
                raise MigrationError(f"migration {migration.name} failed: {first_line}") from exc
            names.append(migration.name)
    return names


def check_current(target: MigrationTarget, backend: Backend) -> None:
    """Return when every shipped migration is applied and nothing unknown is; else SchemaError."""
    shipped = available(backend)
    applied = target.applied()
    if applied is None:
        raise SchemaError("database schema is missing: run `chatd migrate`")
    _refuse_unknown(applied, shipped)
    pending = [m.name for m in shipped if m.version not in applied]
    if pending:
        raise SchemaError(
            f"database schema is not current, pending: {', '.join(pending)}; run `chatd migrate`"
        )
