"""`SharedRateLimiter`: the per-user send limits held across instances, in Redis.

Without it each instance has its own `SendRateLimiter` (chatd/domain/rules.py), so behind a
round-robin load balancer a user may send N times the limit. Here the token bucket and the
identical-text rule live in Redis, changed atomically by one Lua script per round trip
(`CHECK`), using the senders' clock (``now``, like the local rules).

**Why not one round trip per send.** Measured with ``python -m bench.ratelimit`` on this kind
of machine (2 cores shared with other work, so figures are rough): a check that makes a round
trip alone costs ~0.24 ms of chatd CPU (the trio -> worker-thread hop, not Redis), over the
0.2 ms per send budget, and it is paid by the event loop that also runs every socket; the
local limiter costs ~3 µs. So:

- **Tokens are leased in blocks.** A round trip takes up to `lease_block` tokens from the
  user's shared bucket (one for this send); the next sends of that user on this instance
  spend the lease locally, with no I/O, until it runs out or is `lease_seconds` old (one user
  sending back to back: ~0.04 ms per send). The price, both bounded by the block: a user may
  send at most ``lease_block - 1`` more than the limit per instance (tokens leased before a
  burst and spent in it), and tokens leased by one instance are missing on the others until
  spent or expired. ``lease_block = 1`` is one exact check per send.
- **Identical texts are checked in Redis.** A send spending a lease records its text's digest
  locally; the digests go to Redis with the next round trip. A text this instance has already
  accepted within the window (a repeat, what the rule is about) always makes a round trip,
  which counts it across instances atomically. So at most one copy of a text per instance is
  not yet counted in Redis: a spammer round-robining one text gets at most ``instances - 1``
  more than `identical_content` per window, and nobody else pays a round trip for it.
- **An empty bucket is remembered** until Redis said it refills: a user over the limit is
  refused locally, without a round trip per attempt.
- **Round trips of all users share a hop** (`ScriptBatcher`): with 64 checks in flight one
  pipeline carries many users' checks, ~0.04 ms of chatd CPU each. Only at low load, when a
  check has nothing to share its hop with, does one cost ~0.24 ms: when the process has CPU
  to spare.

The local limiter always runs first (it is never looser than the shared one, and it is the
fallback): when Redis is down or slow the send is decided by it alone, at no latency, and a
send the shared check refuses is refunded there. Nothing fails because of Redis.

Keys (under the tier's prefix): ``rl:{user}:b`` the bucket (hash ``tk``, ``ts``; expires once
full again), ``rl:{user}:t:{digest}`` the times a text was accepted (a list; expires with the
window).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from chatd.domain.errors import RateLimited
from chatd.domain.lru import Lru
from chatd.domain.rules import (
    SendRateLimiter,
    text_digest,
    too_many_identical,
    too_many_sends,
)
from chatd.redis_tier.client import RedisTier
from chatd.redis_tier.errors import RedisUnavailable

log = logging.getLogger(__name__)

DEFAULT_LEASE_BLOCK: Final = 10
DEFAULT_LEASE_SECONDS: Final = 10.0

#: KEYS[1] the bucket; KEYS[2..n-1] texts sent on leased tokens since the last call (their
#: times in ARGV[7..]); KEYS[n] this send's text. ARGV: burst, rate, now, want, window, limit.
#: Returns {0, 0, granted} or {1 (bucket) | 2 (identical), retry_ms, count}.
CHECK: Final = """
local burst, rate, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local want, window, limit = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local keep = math.ceil(window * 1000) + 1000
for i = 2, #KEYS - 1 do
  redis.call('RPUSH', KEYS[i], ARGV[5 + i])
  redis.call('PEXPIRE', KEYS[i], keep)
end
local state = redis.call('HMGET', KEYS[1], 'tk', 'ts')
local tokens, ts = tonumber(state[1]) or burst, tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
if tokens < 1 then
  return {1, math.ceil((1 - tokens) / rate * 1000), 0}
end
local text = KEYS[#KEYS]
while true do
  local oldest = redis.call('LINDEX', text, 0)
  if not oldest or tonumber(oldest) > now - window then break end
  redis.call('LPOP', text)
end
local count = redis.call('LLEN', text)
if count >= limit then
  local oldest = tonumber(redis.call('LINDEX', text, 0))
  return {2, math.max(1, math.ceil((oldest + window - now) * 1000)), count}
end
local grant = math.min(want, math.floor(tokens))
redis.call('HSET', KEYS[1], 'tk', tostring(tokens - grant), 'ts', tostring(math.max(ts, now)))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
redis.call('RPUSH', text, ARGV[3])
redis.call('PEXPIRE', text, keep)
return {0, 0, grant}
"""


@dataclass(slots=True)
class _Lease:
    tokens: int = 0
    expires: float = 0.0
    #: the shared bucket said empty until then: refuse here without asking again
    empty_until: float = 0.0
    #: (digest, time) of sends on leased tokens, not yet counted in Redis
    unsynced: list[tuple[bytes, float]] = field(default_factory=list)


class SharedRateLimiter:
    """The local `SendRateLimiter` plus the shared limits in Redis (see the module doc)."""

    def __init__(
        self,
        tier: RedisTier,
        local: SendRateLimiter,
        *,
        lease_block: int = DEFAULT_LEASE_BLOCK,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
    ) -> None:
        self.tier = tier
        self.local = local
        self.lease_block = max(1, min(lease_block, local.send_burst))
        self.lease_seconds = lease_seconds
        self._script = tier.scripts.register(CHECK)
        self._leases: Lru[str, _Lease] = Lru(local.max_users)
        #: Sends decided without a round trip (lease), with one, and by the local limiter
        #: alone because Redis was down (for metrics and tests).
        self.leased = 0
        self.checked = 0
        self.fallbacks = 0

    async def check(self, user: str, content: str, now: float) -> None:
        """Record a send by `user` at `now` (wall-clock seconds) or refuse it.

        Raises `RateLimited` like `SendRateLimiter.check`, locally or across instances.
        """
        await self.check_many(user, (content,), now)

    async def check_many(self, user: str, contents: Sequence[str], now: float) -> None:
        """Record a batch of sends or refuse it whole (`SendRateLimiter.check_many` here
        first). Across instances each text is checked as a single send would be; when one is
        refused the whole batch is refunded locally and its texts' leased tokens are spent
        (a refused batch may cost the user part of a lease, it never lets a text through).
        """
        counts = self.local.check_many(user, contents, now)
        try:
            for content, count in zip(contents, counts, strict=True):
                await self._check_shared(user, content, count, now)
        except RateLimited:
            for content in contents:
                self.local.refund(user, content)
            raise

    async def _check_shared(self, user: str, content: str, count: int, now: float) -> None:
        """The shared side of one send the local limiter accepted as the `count`-th copy of
        its text in the window; raises RateLimited (the caller refunds locally)."""
        if not self.tier.up:
            self.fallbacks += 1
            return
        digest = text_digest(content)
        lease = self._leases.get(user)
        if lease is None:
            lease = _Lease()
            self._leases.put(user, lease)
        if count == 1 and lease.tokens >= 1 and now < lease.expires:
            lease.tokens -= 1
            lease.unsynced.append((digest, now))
            self.leased += 1
            return
        if now < lease.empty_until:  # no refill before then, whoever asks
            raise too_many_sends(lease.empty_until - now)
        await self._round_trip(user, digest, lease, now)

    async def _round_trip(self, user: str, digest: bytes, lease: _Lease, now: float) -> None:
        local = self.local
        unsynced, lease.unsynced = lease.unsynced, []
        keys = [self.tier.key("rl", user, "b")]
        keys += [self._text_key(user, d) for d, _ in unsynced]
        keys.append(self._text_key(user, digest))
        args: list[object] = [
            local.send_burst,
            repr(local.sends_per_second),
            repr(now),
            self.lease_block,
            repr(local.identical_window_seconds),
            local.identical_content,
        ]
        args += [repr(t) for _, t in unsynced]
        try:
            verdict, retry_ms, value = await self.tier.scripts.run_script(self._script, keys, args)
        except RedisUnavailable:
            self.fallbacks += 1  # the local limiter decided; the digests are not counted
            return
        self.checked += 1
        if verdict == 0:
            lease.tokens, lease.expires = int(value) - 1, now + self.lease_seconds
            return
        lease.tokens = 0
        wait = int(retry_ms) / 1000
        if verdict == 1:
            lease.empty_until = now + wait
            raise too_many_sends(wait)
        raise too_many_identical(int(value), local.identical_window_seconds, wait)

    def _text_key(self, user: str, digest: bytes) -> str:
        return self.tier.key("rl", user, "t", digest.hex())

    def refund(self, user: str, content: str) -> None:
        """Undo one accepted `check` (an idempotent repeat): locally, and into the lease."""
        self.local.refund(user, content)
        lease = self._leases.get(user)
        if lease is None:
            return
        digest = text_digest(content)
        for i in range(len(lease.unsynced) - 1, -1, -1):
            if lease.unsynced[i][0] == digest:
                del lease.unsynced[i]
                break
        lease.tokens = min(lease.tokens + 1, self.lease_block)


__all__ = ["CHECK", "DEFAULT_LEASE_BLOCK", "DEFAULT_LEASE_SECONDS", "SharedRateLimiter"]
