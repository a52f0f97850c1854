"""Presence, pure: the JSON a peer sees, and the grace period that hides reconnects.

A user is online while at least one STOMP session of theirs is connected anywhere. This module
knows nothing of sockets, trio or Redis: `GraceTracker` turns "this instance's first session of
X connected" / "its last one ended" plus the time (`now`, any monotonic clock in seconds) into
the changes worth telling others about, so a reconnect within the grace period produces none.
Every rule about when a local change becomes visible lives in `GraceTracker`.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from chatd.domain.models import iso_utc

#: The `event` header value and JSON `event` field of presence updates.
EVENT_PRESENCE: Final = "presence"
DEFAULT_GRACE_SECONDS: Final = 5.0
DEFAULT_TTL_SECONDS: Final = 30.0
#: Peers told about one change, and answered in one snapshot (most recently active first); a
#: snapshot is one frame per peer, so this stays well below a session's send-queue bound.
DEFAULT_MAX_PEERS: Final = 200
#: Emails one `GET /api/chat/presence` may ask about.
DEFAULT_MAX_QUERY: Final = 100


@dataclass(frozen=True, slots=True)
class Presence:
    """What peers learn about a user: online or not, and when last seen (None: while online,
    or never seen since this knowledge began)."""

    email: str
    online: bool
    last_seen: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        """`{event, email, online, lastSeen}`: the body of a presence MESSAGE and an entry of
        the REST answer."""
        return {
            "event": EVENT_PRESENCE,
            "email": self.email,
            "online": self.online,
            "lastSeen": None if self.last_seen is None else iso_utc(self.last_seen),
        }


@dataclass(slots=True)
class _Leaving:
    deadline: float
    seen_at: datetime


class GraceTracker:
    """This instance's users: who arrived (to announce) and whose grace period ran out.

    `connected`/`disconnected` are called synchronously as sessions come and go (they only
    update dictionaries); the presence runner then takes `arrivals()` and `due(now)`. A user
    whose last session ended is "leaving" until `grace` seconds later; connecting again in
    that time cancels the departure, and nothing is announced either way.
    """

    def __init__(self, grace: float = DEFAULT_GRACE_SECONDS) -> None:
        self.grace = grace
        self._here: set[str] = set()  # a session connected on this instance now
        self._arrived: dict[str, None] = {}  # to announce, in arrival order
        # Deadlines never decrease, so insertion order is deadline order; an OrderedDict
        # gives the first entry and removes it in O(1). (A plain dict copied whole on each
        # `due`, and the soak's 1 500 users per instance made that 5 % of a core.)
        self._leaving: OrderedDict[str, _Leaving] = OrderedDict()

    def connected(self, email: str) -> None:
        """The user's first session on this instance connected."""
        self._here.add(email)
        if self._leaving.pop(email, None) is None:
            self._arrived[email] = None

    def disconnected(self, email: str, now: float, seen_at: datetime) -> None:
        """The user's last session on this instance ended at `now` (`seen_at` on the wall
        clock: the `lastSeen` peers will get if the user does not come back in time)."""
        self._here.discard(email)
        self._leaving.pop(email, None)  # re-inserted last: keeps deadlines in order
        self._leaving[email] = _Leaving(now + self.grace, seen_at)

    def arrivals(self) -> list[str]:
        """Users who connected since the last call and were not within a grace period."""
        arrived = list(self._arrived)
        self._arrived.clear()
        return arrived

    def due(self, now: float) -> list[tuple[str, datetime]]:
        """(user, last seen) for each user whose grace period ended by `now`, forgotten here."""
        gone: list[tuple[str, datetime]] = []
        while self._leaving:
            email, leaving = next(iter(self._leaving.items()))
            if leaving.deadline > now:
                break
            self._leaving.popitem(last=False)
            gone.append((email, leaving.seen_at))
        return gone

    def next_deadline(self) -> float | None:
        """When the next grace period ends (None: nobody is leaving)."""
        first = next(iter(self._leaving.values()), None)
        return None if first is None else first.deadline

    def present(self) -> set[str]:
        """Users this instance counts as online: connected, or within their grace period."""
        return self._here | set(self._leaving)

    def is_present(self, email: str) -> bool:
        """`email in present()`, without building the set."""
        return email in self._here or email in self._leaving
