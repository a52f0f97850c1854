"""User names and passwords for the standalone broker, checked in constant time (sans-IO).

`python -m stomp --login USER --passcode PASS` and `--users FILE` (one `user:password` a line)
build a `Users`; a CONNECT whose `login`/`passcode` are not one of its pairs is refused, as
RabbitMQ refuses an unknown user. Only digests are kept, and every check compares one digest
with another of the same length (a dummy one for an unknown user), so neither a password's
length nor whether a user exists shows in how long a refusal takes.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

#: The `message` header of the ERROR that refuses a CONNECT with wrong or missing credentials.
ACCESS_REFUSED = "access refused"

_UNKNOWN_USER = hashlib.sha256(b"\0no such user\0").digest()


def _digest(password: str) -> bytes:
    return hashlib.sha256(password.encode()).digest()


class Users:
    """The accepted (login, passcode) pairs."""

    def __init__(self, pairs: Iterable[tuple[str, str]] = ()) -> None:
        """Raises ValueError for an empty login or password: a CONNECT without a passcode is
        checked as an empty one, which must never match."""
        self._digests: dict[str, bytes] = {}
        for login, password in pairs:
            self.add(login, password)

    def add(self, login: str, password: str) -> None:
        """Accept `login` with `password` (replacing its former password).

        Raises ValueError for an empty login or password.
        """
        if not login or not password:
            raise ValueError("a user needs a non-empty name and password")
        self._digests[login] = _digest(password)

    def __len__(self) -> int:
        return len(self._digests)

    def check(self, login: str | None, passcode: str | None) -> bool:
        """Whether `login` and `passcode` (from CONNECT; None when absent) are a known pair."""
        expected = self._digests.get(login or "")
        # Always compare (even for a missing header or an unknown user): same work either way.
        # A missing passcode compares as "", which no user has.
        matches = hmac.compare_digest(_digest(passcode or ""), expected or _UNKNOWN_USER)
        return matches and expected is not None

    @classmethod
    def parse(cls, text: str, source: str = "users file") -> Users:
        """Users from `user:password` lines (the password is all after the first ':'); blank
        lines and lines starting with '#' are skipped; nothing else is trimmed, so a password
        may hold any character. Raises ValueError naming the line of `source` that is not a
        pair."""
        users = cls()
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.startswith("#"):
                continue
            login, colon, password = line.partition(":")
            if not colon or not login or not password:
                raise ValueError(f"{source}, line {number}: expected user:password")
            users.add(login, password)
        return users
