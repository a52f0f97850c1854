"""The retry policy of the outbox: when a failed row is tried again, and when it is given up.

Pure functions of (attempt count, settings, now, a random number), so the rules can be tested as
a table and the publisher holds no policy of its own. Every retry rule lives here:

* a row's ``retry_count`` is how many attempts already failed; the failing attempt is number
  ``retry_count + 1``;
* that attempt is the last one when it reaches ``max_attempts``: the row becomes *dead* (never
  claimed again, counted by `Store.outbox_stats`, logged at ERROR by the publisher);
* otherwise the row is due again after ``backoff_base * 2**retry_count`` seconds, capped at
  ``backoff_cap``, shortened by up to `JITTER` of itself at random so that rows failed together
  (a broker restart fails a whole batch) do not all come back in the same instant;
* a store outage (the publisher cannot even claim) backs off by the same curve, counted in
  consecutive failed store calls; the publisher never gives up on the store.

Jitter only ever shortens the delay, so the cap is a true upper bound and a random source that
returns 1.0 turns jitter off (what the tests inject).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

JITTER = 0.5
MAX_EXPONENT = 62  # 2**62 * any sane base is far beyond every cap; avoids float overflow


class RetrySettings(Protocol):
    """The ``[outbox]`` values the policy reads; `chatd.config.OutboxConfig` is one."""

    @property
    def max_attempts(self) -> int: ...

    @property
    def backoff_base(self) -> float: ...

    @property
    def backoff_cap(self) -> float: ...


@dataclass(frozen=True, slots=True)
class Failure:
    """What to record for a failed attempt: the next due time, and whether the row is dead."""

    attempts: int
    next_retry_at: datetime
    dead: bool


def backoff_delay(failures: int, *, base: float, cap: float, rand: float = 1.0) -> float:
    """Seconds to wait after `failures` earlier failures (0 for the first retry): the capped
    exponential ``min(cap, base * 2**failures)`` scaled into ``[1 - JITTER, 1]`` by `rand`.

    Raises ValueError for a negative count or a `rand` outside [0, 1].
    """
    if failures < 0:
        raise ValueError("failures must not be negative")
    if not 0.0 <= rand <= 1.0:
        raise ValueError("rand must be within [0, 1]")
    full = min(cap, base * 2.0 ** min(failures, MAX_EXPONENT))
    return full * (1.0 - JITTER + JITTER * rand)


def plan_failure(
    retry_count: int, settings: RetrySettings, *, now: datetime, rand: float = 1.0
) -> Failure:
    """The outcome of a failed attempt on a row that had `retry_count` failures before it."""
    attempts = retry_count + 1
    delay = backoff_delay(
        retry_count, base=settings.backoff_base, cap=settings.backoff_cap, rand=rand
    )
    return Failure(attempts, now + timedelta(seconds=delay), attempts >= settings.max_attempts)
