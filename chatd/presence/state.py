"""`PresenceState`: who is online anywhere, as this instance can know it.

Two implementations: `LocalPresence` (one instance, or the fallback when Redis is away) knows
this instance's users only; `chatd.presence.redis_state.RedisPresence` shares every instance's
users through Redis, with per-instance entries that expire, so a killed instance's users go
offline on their own. The presence runner (`chatd.presence.service`) is their only caller and
calls them from one task, one change at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Final, Protocol

from chatd.domain.lru import Lru
from chatd.domain.presence import Presence

#: Users whose last-seen time a local state remembers (least recently offline forgotten first).
DEFAULT_MAX_LAST_SEEN: Final = 100_000


class PresenceState(Protocol):
    """This instance's users coming and going, and everyone's presence as far as known.

    No method raises for a backend being down: an implementation with a remote backend falls
    back to what this instance knows by itself (a connect or a send never fails for presence).
    """

    @property
    def kind(self) -> str:
        """ "local" or "redis", for the ready line."""
        ...

    @property
    def complete(self) -> bool:
        """True while `lookup` sees every instance's users: then a peer it calls offline has
        no connection anywhere and needs no update. False for this instance's knowledge
        alone (other instances' users look offline: updates go to every peer, and the
        RabbitMQ relay reaches the instances that hold them)."""
        ...

    async def arrive(self, email: str) -> bool:
        """The user now has a session on this instance: True when they were offline
        everywhere before (peers should learn they are online)."""
        ...

    async def leave(self, email: str, seen_at: datetime) -> bool:
        """The user has no session on this instance any more (grace period over): True when
        they are now offline everywhere (peers learn it, with `seen_at` as last seen)."""
        ...

    async def lookup(self, emails: Sequence[str]) -> dict[str, Presence]:
        """The presence of each of `emails` (every one gets an entry)."""
        ...

    async def maintain(self, present: set[str], now: datetime) -> list[Presence]:
        """Called every few seconds with the users this instance counts as online: keep
        this instance's entries alive, and return users who went offline because another
        instance stopped renewing its entries (it died): peers should learn that too."""
        ...

    async def renew(self, now: datetime) -> bool:
        """Keep this instance's entries alive, nothing more (`maintain` does this too, with
        the users): the runner renews on time this way even while a long step holds up its
        next `maintain`. False when that could not be done now (retry soon)."""
        ...

    async def retire(self, grace: float) -> None:
        """This instance is stopping: let its users' entries lapse `grace` seconds from now,
        so that users who reconnect to another instance within it never appear offline."""
        ...


class LocalPresence:
    """What one instance knows alone: its own users. The whole truth with one instance."""

    def __init__(self, *, max_last_seen: int = DEFAULT_MAX_LAST_SEEN) -> None:
        self._online: set[str] = set()
        self._last_seen: Lru[str, datetime] = Lru(max_last_seen)

    @property
    def kind(self) -> str:
        return "local"

    @property
    def complete(self) -> bool:
        return False

    def arrive_now(self, email: str) -> bool:
        """`arrive`, synchronously (the Redis state keeps a local mirror with it)."""
        if email in self._online:
            return False
        self._online.add(email)
        return True

    def leave_now(self, email: str, seen_at: datetime) -> bool:
        """`leave`, synchronously."""
        self._online.discard(email)
        self._last_seen.put(email, seen_at)
        return True

    def lookup_now(self, emails: Sequence[str]) -> dict[str, Presence]:
        """`lookup`, synchronously."""
        return {
            e: Presence(e, True)
            if e in self._online
            else Presence(e, False, self._last_seen.get(e))
            for e in emails
        }

    def remember_seen(self, email: str, seen_at: datetime) -> None:
        """Note when a user of another instance was last seen (from Redis)."""
        self._last_seen.put(email, seen_at)

    async def arrive(self, email: str) -> bool:
        return self.arrive_now(email)

    async def leave(self, email: str, seen_at: datetime) -> bool:
        return self.leave_now(email, seen_at)

    async def lookup(self, emails: Sequence[str]) -> dict[str, Presence]:
        return self.lookup_now(emails)

    async def maintain(self, present: set[str], now: datetime) -> list[Presence]:
        return []

    async def renew(self, now: datetime) -> bool:
        return True

    async def retire(self, grace: float) -> None:
        return None
