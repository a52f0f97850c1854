"""Start-up failures an operator can fix: one carrier, `StartupError`, and the mappings to it.

Each part maps its own failures where it starts (the supervisor for the store, keys and
listeners, the CLI for the data dir) into a `StartupError` naming the part, the address or
file, the cause and what to do; the CLI prints it once, as one line (one JSON event with JSON
logs), and exits with its `exit_code`:

- `EXIT_CONFIG` (2): what the operator wrote must change: a flag, the config file, a key file,
  the database user, password or name, an address this host does not have, the data dir;
- `EXIT_UNAVAILABLE` (1): a dependency cannot be reached or used now: PostgreSQL still down
  after ``[database] startup_timeout``, the JWKS URL, a port another process holds, a
  database migrated by a newer chatd or a migration that failed.

This module is the carrier only (standard library: the CLI imports it for every command);
`local` maps listeners, folders and key files, `database` opens and migrates the store with
a bounded wait, `probe` tries each dependency for ``chatd check-config --connect``.
"""

from __future__ import annotations

import re

EXIT_CONFIG = 2
EXIT_UNAVAILABLE = 1
_ERRNO = re.compile(r"^\[Errno -?\d+\] ")  # what str(OSError) starts with


class StartupError(Exception):
    """chatd cannot start: `part` (``http``, ``database``...), `where` (address, file or
    URL), `cause` (as the OS or the peer put it), `hint` (what to do); ``str()`` is the line
    an operator reads: ``cannot listen on 127.0.0.1:8080: address already in use (hint)``."""

    def __init__(
        self,
        part: str,
        action: str,
        where: str,
        cause: str,
        hint: str,
        *,
        exit_code: int = EXIT_UNAVAILABLE,
    ) -> None:
        super().__init__(f"{action} {where}: {cause} ({hint})")
        self.part, self.where, self.cause, self.hint = part, where, cause, hint
        self.exit_code = exit_code

    @property
    def fields(self) -> dict[str, str]:
        """The parts of the line, as structured log fields."""
        return {"part": self.part, "address": self.where, "cause": self.cause, "hint": self.hint}


def only_startup_errors(group: BaseExceptionGroup[BaseException]) -> StartupError | None:
    """The first `StartupError` of `group` when nothing else is in it (nurseries wrap a
    part's failure in groups; the operator should see the failure, not the nesting)."""
    matched, rest = group.split(StartupError)
    if matched is None or rest is not None:
        return None
    leaf: BaseException = matched
    while isinstance(leaf, BaseExceptionGroup):
        leaf = leaf.exceptions[0]
    return leaf if isinstance(leaf, StartupError) else None


def sentence(text: str) -> str:
    """An OS or driver message as the middle of our line: ``[Errno 111] Connection refused``
    -> ``connection refused`` (an acronym like ``SSL`` keeps its case)."""
    text = _ERRNO.sub("", text.strip())
    return text[:1].lower() + text[1:] if text[1:2].islower() else text


__all__ = ["EXIT_CONFIG", "EXIT_UNAVAILABLE", "StartupError", "only_startup_errors", "sentence"]
