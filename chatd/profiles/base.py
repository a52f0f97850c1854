"""The profile provider contract: `{id, displayName}` per email and intent.

Services depend on this protocol only; the embedded default plugs in `LocalProfileProvider`,
a deployment the remote profile-service client (cached, with a circuit breaker). "Unknown user"
is `chatd.domain.errors.NotFound` (init answers 404); "service down" is `Unavailable` (503).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class Profile:
    """A user's public face in one intent; `id` is what sessions store as participant id."""

    id: str
    display_name: str


@runtime_checkable
class ProfileProvider(Protocol):
    """Resolves the profile of an existing user."""

    async def lookup(self, email: str, intent: str) -> Profile:
        """The profile of `email` (already normalized) for `intent`.

        Raises `NotFound` when no such user exists and `Unavailable` when the source of
        profiles cannot answer right now.
        """
        ...
