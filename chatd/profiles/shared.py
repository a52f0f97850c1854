"""The second-level profile cache in Redis, shared by every instance.

Why: each instance's in-process cache (`CachedProfiles`) is cold for a user it has not seen,
so behind a round-robin load balancer N instances called the profile service N times per
user. With the Redis tier, `CachedProfiles` asks here before calling the profile service and
stores what the service answered, found profiles and "no such user" alike, with the same TTLs
as its own cache; an entry found here lives in the local cache only for what is left of its
time in Redis, so no copy outlives the TTL the service's answer was given.

Never a point of failure: every method swallows `RedisUnavailable` (a miss, or nothing
stored) and the caller goes on to the profile service, exactly as without Redis. Two
instances missing the same user at the same moment may both call the service (single-flight
is per instance); sequential look-ups on any instance call it once per TTL.

One round trip per look-up (GET and PTTL pipelined), one per store (SET with PX).
"""

from __future__ import annotations

import json
import logging
from typing import Any, Final

from chatd.domain.errors import NotFound
from chatd.profiles.base import Profile
from chatd.redis_tier import RedisTier, RedisUnavailable

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (email, intent)
Entry = Profile | NotFound

#: Key family under the tier's prefix: ``{prefix}profile:{intent}:{email}``.
KEY_FAMILY: Final = "profile"


def encode(entry: Entry) -> bytes:
    """The JSON stored for a found profile or a "no such user" answer."""
    if isinstance(entry, NotFound):
        return json.dumps({"notFound": entry.message}).encode()
    return json.dumps({"id": entry.id, "displayName": entry.display_name}).encode()


def decode(raw: bytes) -> Entry | None:
    """The entry `encode` wrote, or None for anything else (another release's format)."""
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    if isinstance(data.get("notFound"), str):
        return NotFound(data["notFound"])
    pid, name = data.get("id"), data.get("displayName")
    if isinstance(pid, str) and isinstance(name, str):
        return Profile(id=pid, display_name=name)
    return None


class SharedProfileCache:
    """Profiles and "no such user" answers in Redis, read and written by every instance."""

    def __init__(self, tier: RedisTier) -> None:
        self.tier = tier
        #: Look-ups answered from Redis, and those that found nothing (or Redis down).
        self.hits = 0
        self.misses = 0

    def key(self, key: Key) -> str:
        email, intent = key
        return self.tier.key(KEY_FAMILY, intent, email)

    async def get(self, key: Key) -> tuple[Entry, float] | None:
        """(entry, seconds it has left) when Redis has one; None otherwise, Redis down too."""
        name = self.key(key)

        def read(client: Any) -> list[object]:
            pipe = client.pipeline(transaction=False)
            pipe.get(name)
            pipe.pttl(name)
            result: list[object] = pipe.execute()
            return result

        try:
            raw, pttl = await self.tier.call(read)
        except RedisUnavailable:
            self.misses += 1
            return None
        entry = decode(raw) if isinstance(raw, bytes) else None
        if entry is None or not isinstance(pttl, int) or pttl <= 0:
            self.misses += 1
            return None
        self.hits += 1
        return entry, pttl / 1000

    async def put(self, key: Key, entry: Entry, ttl: float) -> None:
        """Store `entry` for `ttl` seconds (nothing when `ttl` is 0 or Redis is down)."""
        milliseconds = int(ttl * 1000)
        if milliseconds <= 0:
            return
        name, value = self.key(key), encode(entry)
        try:
            await self.tier.call(lambda client: client.set(name, value, px=milliseconds))
        except RedisUnavailable:
            log.debug("redis down: profile %s/%s cached locally only", *key)


__all__ = ["KEY_FAMILY", "SharedProfileCache", "decode", "encode"]
