"""`RedisPresence`: presence shared by every instance through Redis, never depending on it.

Keys (under the tier's prefix, `presence:` then):

* ``instances`` — sorted set: instance id -> the time (ms) its entries lapse, 2/3 TTL after
  its last renewal. Each instance renews every TTL/3 (`maintain`, so one late renewal is
  forgiven); a killed instance stops renewing, and once its score is past, its users count as
  offline for every reader at once. The survivors reap every TTL/3 too, so peers are told
  within TTL of the kill: at most 2/3 TTL until the entries lapse, plus 1/3 TTL to notice.
  ``renewed`` holds when each last renewed (or retired): its users' last-seen time once it is
  found dead.
* ``inst:{id}`` — set: the users online on that instance. Expires 3 x TTL after its last
  renewal (so the keys of a dead instance disappear on their own), which leaves the other
  instances at least two renewal periods to find it and announce its users offline.
* ``user:{email}`` — set: the instances holding the user; expires like ``inst:``.
* ``seen:{email}`` — the user's last-seen time (ms), kept `LAST_SEEN_DAYS`.

A user is online when any instance in ``user:{email}`` has a score in the future. Arrive,
leave, lookup and maintain are one Lua script each (atomic, one round trip per call), so two
instances racing on one user (a reconnect that lands elsewhere) always agree on who announces
what. The scripts touch keys they discover (the users of a dead instance), so they need a
single Redis (or a primary with replicas), not Redis Cluster.

Times come from `clock` (this instance's wall clock, injectable for tests): instances' clocks
must agree to well within the TTL, as NTP gives.

Never a single point of failure: every call goes through `RedisTier.call` (bounded, instant
failure while the tier is down); on `RedisUnavailable` the answer comes from `local`, a
`LocalPresence` this class keeps up to date with this instance's own users in any case. After
an outage, the next `maintain` writes this instance's users again (Redis may have restarted
empty) and drops the ones who left meanwhile.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from chatd.domain.presence import DEFAULT_TTL_SECONDS, Presence
from chatd.presence.state import LocalPresence
from chatd.redis_tier import RedisTier, RedisUnavailable

log = logging.getLogger("chatd.presence")

Clock = Callable[[], datetime]
#: How long a last-seen time is kept after the user went offline.
LAST_SEEN_DAYS: Final = 30
#: Instance and user entries live this many TTLs past their last renewal.
KEY_LIFE_TTLS: Final = 3

# A user is online when one of the instances holding them is alive (score in the future).
_ALIVE = """
local function alive(instances, holders, now, skip)
  for _, id in ipairs(holders) do
    if id ~= skip then
      local until_ms = redis.call('ZSCORE', instances, id)
      if until_ms and tonumber(until_ms) > now then return true end
    end
  end
  return false
end
"""

# KEYS: instances, inst:{me}, user:{email}; ARGV: me, email, now, lapse ms, key life ms.
# Returns 1 when the user was offline everywhere before.
_ARRIVE = (
    _ALIVE
    + """
local me, email, now, lapse, life = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
local was = alive(KEYS[1], redis.call('SMEMBERS', KEYS[3]), now, nil)
redis.call('ZADD', KEYS[1], now + lapse, me)
redis.call('SADD', KEYS[2], email)
redis.call('PEXPIRE', KEYS[2], life)
redis.call('SADD', KEYS[3], me)
redis.call('PEXPIRE', KEYS[3], life)
if was then return 0 end
return 1
"""
)

# KEYS: instances, inst:{me}, user:{email}, seen:{email}; ARGV: me, email, now, seen ms,
# seen life ms. Returns 1 when the user is now offline everywhere.
_LEAVE = (
    _ALIVE
    + """
local me, email, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
redis.call('SREM', KEYS[2], email)
redis.call('SREM', KEYS[3], me)
if alive(KEYS[1], redis.call('SMEMBERS', KEYS[3]), now, nil) then return 0 end
redis.call('SET', KEYS[4], ARGV[4], 'PX', ARGV[5])
return 1
"""
)

# KEYS: instances, then user:{e}, seen:{e} per email; ARGV: now.
# Returns per email: 1 (online), or the last-seen ms ('' when unknown).
_LOOKUP = (
    _ALIVE
    + """
local now = tonumber(ARGV[1])
local out = {}
for i = 2, #KEYS, 2 do
  if alive(KEYS[1], redis.call('SMEMBERS', KEYS[i]), now, nil) then
    out[#out + 1] = 1
  else
    out[#out + 1] = redis.call('GET', KEYS[i + 1]) or ''
  end
end
return out
"""
)

# KEYS: instances, inst:{me}, renewed; ARGV: me, now, lapse ms, key life ms, seen life ms, prefix,
# then the users this instance counts as online.
# Renews this instance, rewrites its users (Redis may have lost them), drops those it no longer
# holds, and reaps dead instances. Returns {email, last seen ms, ...} of users now offline.
_MAINTAIN = (
    _ALIVE
    + """
local me, now, lapse, life, seen_life, prefix =
  ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local now_text = ARGV[2]
local gone = {}
local function drop(id, email, seen)
  local key = prefix .. 'user:' .. email
  redis.call('SREM', key, id)
  if not alive(KEYS[1], redis.call('SMEMBERS', key), now, nil) then
    redis.call('SET', prefix .. 'seen:' .. email, seen, 'PX', seen_life)
    gone[#gone + 1] = email
    gone[#gone + 1] = seen
  end
end
redis.call('ZADD', KEYS[1], now + lapse, me)
redis.call('ZADD', KEYS[3], now, me)
local present = {}
for i = 7, #ARGV do
  local email = ARGV[i]
  present[email] = true
  redis.call('SADD', KEYS[2], email)
  redis.call('SADD', prefix .. 'user:' .. email, me)
  redis.call('PEXPIRE', prefix .. 'user:' .. email, life)
end
for _, email in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  if not present[email] then
    redis.call('SREM', KEYS[2], email)
    drop(me, email, now_text)
  end
end
redis.call('PEXPIRE', KEYS[2], life)
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)) do
  local renewed = redis.call('ZSCORE', KEYS[3], id)
  if not renewed then renewed = tonumber(redis.call('ZSCORE', KEYS[1], id)) - tonumber(lapse) end
  local last = string.format('%d', tonumber(renewed))
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZREM', KEYS[3], id)
  local inst = prefix .. 'inst:' .. id
  for _, email in ipairs(redis.call('SMEMBERS', inst)) do drop(id, email, last) end
  redis.call('DEL', inst)
end
return gone
"""
)

# KEYS: instances, renewed; ARGV: me, now, lapse ms. Only keeps this instance alive (see
# `RedisPresence.renew`).
_RENEW = """
redis.call('ZADD', KEYS[1], tonumber(ARGV[2]) + tonumber(ARGV[3]), ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return 0
"""

# KEYS: instances, renewed; ARGV: me, now, lapse ms. A stopping instance's entries lapse at
# the given time; its users were last seen now.
_RETIRE = """
if redis.call('ZADD', KEYS[1], 'XX', 'CH', ARGV[3], ARGV[1]) == 1
    or redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
end
return 0
"""


def _ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


def _from_ms(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1000, UTC)


class RedisPresence:
    """`PresenceState` in Redis, for `instance_id`; see the module docstring."""

    def __init__(
        self,
        tier: RedisTier,
        instance_id: str,
        *,
        ttl: float = DEFAULT_TTL_SECONDS,
        clock: Clock | None = None,
        local: LocalPresence | None = None,
    ) -> None:
        self.tier = tier
        self.instance_id = instance_id
        self.ttl_ms = int(ttl * 1000)
        #: An instance's entries lapse this long after its last renewal (see the docstring).
        self.lapse_ms = self.ttl_ms * 2 // 3
        self.clock = clock or (lambda: datetime.now(UTC))
        self.local = local if local is not None else LocalPresence()
        self._instances = tier.key("presence", "instances")
        self._renewed = tier.key("presence", "renewed")
        self._mine = tier.key("presence", "inst", instance_id)
        self._prefix = tier.key("presence", "")
        self._arrive = tier.script(_ARRIVE)
        self._leave = tier.script(_LEAVE)
        self._lookup = tier.script(_LOOKUP)
        self._maintain = tier.script(_MAINTAIN)
        self._retire = tier.script(_RETIRE)
        self._renew = tier.script(_RENEW)
        #: Calls answered from `local` because Redis was not there (metrics, tests).
        self.fallbacks = 0

    @property
    def kind(self) -> str:
        return "redis"

    @property
    def complete(self) -> bool:
        """While Redis answers (else lookups fall back to this instance's users)."""
        return self.tier.up

    def _user(self, email: str) -> str:
        return self._prefix + "user:" + email

    def _seen(self, email: str) -> str:
        return self._prefix + "seen:" + email

    async def _run(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        return await self.tier.call(lambda client: script(keys=keys, args=args, client=client))

    async def arrive(self, email: str) -> bool:
        """See `PresenceState.arrive`; from local knowledge while Redis is away."""
        first_here = self.local.arrive_now(email)
        now = _ms(self.clock())
        try:
            was_offline = await self._run(
                self._arrive,
                [self._instances, self._mine, self._user(email)],
                [self.instance_id, email, now, self.lapse_ms, self.ttl_ms * KEY_LIFE_TTLS],
            )
        except RedisUnavailable:
            self.fallbacks += 1
            return first_here
        return bool(was_offline)

    async def leave(self, email: str, seen_at: datetime) -> bool:
        """See `PresenceState.leave`; from local knowledge while Redis is away."""
        self.local.leave_now(email, seen_at)
        try:
            now_offline = await self._run(
                self._leave,
                [self._instances, self._mine, self._user(email), self._seen(email)],
                [
                    self.instance_id,
                    email,
                    _ms(self.clock()),
                    _ms(seen_at),
                    LAST_SEEN_DAYS * 86_400_000,
                ],
            )
        except RedisUnavailable:
            self.fallbacks += 1
            return True
        return bool(now_offline)

    async def lookup(self, emails: Sequence[str]) -> dict[str, Presence]:
        """See `PresenceState.lookup`; this instance's users only while Redis is away."""
        if not emails:
            return {}
        keys = [self._instances]
        for email in emails:
            keys += [self._user(email), self._seen(email)]
        try:
            answers = await self._run(self._lookup, keys, [_ms(self.clock())])
        except RedisUnavailable:
            self.fallbacks += 1
            return self.local.lookup_now(emails)
        found: dict[str, Presence] = {}
        for email, answer in zip(emails, answers, strict=True):
            if answer == 1:
                found[email] = Presence(email, True)
            else:
                seen = _from_ms(int(answer)) if answer else None
                found[email] = Presence(email, False, seen)
        return found

    async def maintain(self, present: set[str], now: datetime) -> list[Presence]:
        """See `PresenceState.maintain`: renew, resynchronize, reap dead instances."""
        try:
            gone = await self._run(
                self._maintain,
                [self._instances, self._mine, self._renewed],
                [
                    self.instance_id,
                    _ms(now),
                    self.lapse_ms,
                    self.ttl_ms * KEY_LIFE_TTLS,
                    LAST_SEEN_DAYS * 86_400_000,
                    self._prefix,
                    *sorted(present),
                ],
            )
        except RedisUnavailable:
            self.fallbacks += 1
            return []
        out = []
        for i in range(0, len(gone), 2):
            email = gone[i].decode() if isinstance(gone[i], bytes) else str(gone[i])
            seen = _from_ms(int(gone[i + 1]))
            self.local.remember_seen(email, seen)
            out.append(Presence(email, False, seen))
        if out:
            log.info("presence: %d users of stopped instances are offline", len(out))
        return out

    async def renew(self, now: datetime) -> bool:
        """See `PresenceState.renew`: one small call, whatever the number of users."""
        try:
            await self._run(
                self._renew,
                [self._instances, self._renewed],
                [self.instance_id, _ms(now), self.lapse_ms],
            )
        except RedisUnavailable:
            self.fallbacks += 1
            return False
        return True

    async def retire(self, grace: float) -> None:
        """See `PresenceState.retire`: our entries lapse `grace` seconds from now; the other
        instances announce whoever did not reconnect elsewhere by then."""
        with contextlib.suppress(RedisUnavailable):  # else they lapse after the TTL
            now = _ms(self.clock())
            await self._run(
                self._retire,
                [self._instances, self._renewed],
                [self.instance_id, now, now + int(grace * 1000)],
            )
