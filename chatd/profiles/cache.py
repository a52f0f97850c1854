"""A TTL cache with single-flight and a circuit breaker in front of a profile provider.

Why each piece:

- **TTL cache** (cachetools `TLRUCache`, size-bounded): profiles rarely change, and every init
  needs two. Found profiles live `ttl` seconds; "no such user" answers `not_found_ttl` (shorter:
  a user who signs up should not wait long to be reachable).
- **Single-flight**: `cachetools.cached` cannot wrap an ``async def`` (it would cache the
  coroutine), and a plain lock per key would, on failure, let each waiter call again in turn.
  So the first caller for a key fetches and every concurrent caller awaits *that* outcome —
  100 simultaneous inits for one user make one upstream call, success or failure.
- **Circuit breaker** (`CircuitBreaker`): while open, uncached lookups fail at once with 503
  and ``Retry-After``; cached ones keep being served.
- **Shared second level** (optional, `SharedProfileCache` in Redis): asked before the profile
  service and told what it answered, so N instances call the service once per user and TTL.
  Its answers enter the local cache for the time they have left there.
- **Stale-if-error** (optional): a found profile is also kept, size-bounded, past its TTL, and
  answered when the upstream fails or the breaker is open. A display name a few minutes old
  beats a failed chat.

Counters (`hits`, `misses`, `stale`, `rejected`) are plain attributes for metrics and tests.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final

import trio
from cachetools import LRUCache, TLRUCache

from chatd.domain.errors import NotFound, Unavailable
from chatd.profiles.base import Profile, ProfileProvider
from chatd.profiles.breaker import CircuitBreaker
from chatd.profiles.remote import UNAVAILABLE_MESSAGE
from chatd.profiles.shared import SharedProfileCache

log = logging.getLogger(__name__)

DEFAULT_TTL: Final = 300.0
DEFAULT_NOT_FOUND_TTL: Final = 30.0
DEFAULT_MAX_SIZE: Final = 10_000

Key = tuple[str, str]  # (email, intent)
Entry = Profile | NotFound


class _Flight:
    """One upstream call in progress for a key, and its outcome for the callers waiting."""

    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.result: Profile | None = None
        self.error: Exception | None = None


class CachedProfiles:
    """A `ProfileProvider` caching `upstream`'s answers, guarded by `breaker`."""

    def __init__(
        self,
        upstream: ProfileProvider,
        breaker: CircuitBreaker | None = None,
        *,
        ttl: float = DEFAULT_TTL,
        not_found_ttl: float = DEFAULT_NOT_FOUND_TTL,
        max_size: int = DEFAULT_MAX_SIZE,
        stale_if_error: bool = True,
        shared: SharedProfileCache | None = None,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.upstream = upstream
        self.shared = shared
        self.breaker = breaker if breaker is not None else CircuitBreaker(clock=clock)
        self.ttl = ttl
        self.not_found_ttl = not_found_ttl
        self.stale_if_error = stale_if_error
        # (entry, seconds to live): an entry from the shared cache lives what it has left
        self._cache: TLRUCache[Key, tuple[Entry, float]] = TLRUCache(
            maxsize=max_size, ttu=self._expires, timer=clock
        )
        self._stale: LRUCache[Key, Profile] = LRUCache(maxsize=max_size)
        self._flights: dict[Key, _Flight] = {}
        self.hits = 0
        self.misses = 0
        self.stale = 0
        self.rejected = 0

    @staticmethod
    def _expires(key: Key, value: tuple[Entry, float], now: float) -> float:
        return now + value[1]

    def _ttl_of(self, entry: Entry) -> float:
        return self.ttl if isinstance(entry, Profile) else self.not_found_ttl

    async def lookup(self, email: str, intent: str) -> Profile:
        """The cached or fetched profile; raises `NotFound` or `Unavailable` like upstream."""
        key = (email, intent)
        cached = self._cache.get(key)
        if cached is not None:
            entry = cached[0]
            self.hits += 1
            if isinstance(entry, NotFound):
                raise NotFound(entry.message)
            return entry
        flight = self._flights.get(key)
        if flight is not None:
            self.hits += 1  # served by the call already under way
            await flight.done.wait()
            if flight.result is not None:
                return flight.result
            if flight.error is not None:
                raise _copy(flight.error)
            return await self.lookup(email, intent)  # that caller was cancelled: try again
        self.misses += 1
        flight = self._flights[key] = _Flight()
        try:
            flight.result = await self._fetch(key)
            return flight.result
        except (NotFound, Unavailable) as exc:
            flight.error = exc
            raise
        finally:
            del self._flights[key]
            flight.done.set()

    async def _fetch(self, key: Key) -> Profile:
        if self.shared is not None and (found := await self.shared.get(key)) is not None:
            entry, left = found
            self._cache[key] = (entry, min(left, self._ttl_of(entry)))
            if isinstance(entry, NotFound):
                raise NotFound(entry.message)
            if self.stale_if_error:
                self._stale[key] = entry
            return entry
        breaker = self.breaker
        if not breaker.allow():
            self.rejected += 1
            return self._stale_or(
                key,
                Unavailable(
                    f"{UNAVAILABLE_MESSAGE} (circuit open)", max(1.0, breaker.retry_after())
                ),
            )
        outcome: bool | None = None
        try:
            profile = await self.upstream.lookup(*key)
            outcome = True
        except NotFound as exc:
            outcome = True  # a clear answer from a healthy service
            self._cache[key] = (exc, self.not_found_ttl)
            self._stale.pop(key, None)
            if self.shared is not None:
                await self.shared.put(key, exc, self.not_found_ttl)
            raise
        except Unavailable as exc:
            outcome = False
            breaker.record(False)
            return self._stale_or(key, exc)
        finally:
            if outcome is None:
                breaker.release()  # cancelled: no outcome to learn from
            elif outcome:
                breaker.record(True)
        self._cache[key] = (profile, self.ttl)
        if self.stale_if_error:
            self._stale[key] = profile
        if self.shared is not None:
            await self.shared.put(key, profile, self.ttl)
        return profile

    def _stale_or(self, key: Key, error: Unavailable) -> Profile:
        profile = self._stale.get(key) if self.stale_if_error else None
        if profile is None:
            raise error
        self.stale += 1
        log.info("profile service unavailable: serving a stale profile for %s/%s", *key)
        return profile

    def __len__(self) -> int:
        return len(self._cache)


def _copy(error: Exception) -> Exception:
    # Each waiter raises its own instance: one exception object raised in many tasks would
    # collect every task's traceback.
    if isinstance(error, Unavailable):
        return Unavailable(error.message, error.retry_after)
    if isinstance(error, NotFound):
        return NotFound(error.message)
    return error


__all__ = ["CachedProfiles"]
