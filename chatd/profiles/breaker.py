"""A circuit breaker for the profile service: stop calling a dependency that keeps failing.

Why: when the profile service is down, every uncached init would wait a full timeout and tie up
a connection; with the breaker open those fail at once (503 with ``Retry-After``) while cached
profiles keep working, and the service gets room to recover instead of a retry storm.

Every rule lives in this module:

- CLOSED: calls pass; outcomes are kept for the last `window` seconds. It opens when that
  window holds at least `min_failures` failures and failures are at least `failure_rate` of
  all outcomes (one failure in a quiet minute does not open it; a burst does).
- OPEN: calls are refused until `reset_after` seconds have passed; then HALF_OPEN.
- HALF_OPEN: one probe call at a time passes; its success closes the breaker (with a fresh
  window), its failure opens it again for another `reset_after`.

Time comes from `clock` (trio's by default, so tests can use trio's MockClock).
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from typing import Final

import trio

DEFAULT_MIN_FAILURES: Final = 5
DEFAULT_FAILURE_RATE: Final = 0.5
DEFAULT_WINDOW: Final = 30.0
DEFAULT_RESET_AFTER: Final = 30.0


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class CircuitBreaker:
    """Failure-rate circuit breaker; call `allow()` before a call and `record()` after it."""

    def __init__(
        self,
        *,
        min_failures: int = DEFAULT_MIN_FAILURES,
        failure_rate: float = DEFAULT_FAILURE_RATE,
        window: float = DEFAULT_WINDOW,
        reset_after: float = DEFAULT_RESET_AFTER,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.min_failures = min_failures
        self.failure_rate = failure_rate
        self.window = window
        self.reset_after = reset_after
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._outcomes: deque[tuple[float, bool]] = deque()  # (time, ok) within the window
        self._failures = 0
        self._opened_at = 0.0
        self._probing = False
        #: How often the breaker opened (for metrics and tests).
        self.opened = 0

    @property
    def state(self) -> BreakerState:
        """The current state (OPEN turns HALF_OPEN once the cool-down has passed)."""
        if self._state is BreakerState.OPEN and self._clock() >= self._opened_at + self.reset_after:
            self._state = BreakerState.HALF_OPEN
            self._probing = False
        return self._state

    def retry_after(self) -> float:
        """Seconds until a call may pass again (0 unless open)."""
        if self.state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self._opened_at + self.reset_after - self._clock())

    def allow(self) -> bool:
        """Whether a call may go out now; in HALF_OPEN this claims the one probe slot."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and not self._probing:
            self._probing = True
            return True
        return False

    def record(self, ok: bool) -> None:
        """The outcome of a call `allow()` let through."""
        now = self._clock()
        state = self.state
        if state is BreakerState.HALF_OPEN:
            if ok:
                self._close()
            else:
                self._open(now)
            return
        if state is BreakerState.OPEN:
            return  # a call that started before the breaker opened: nothing new to learn
        self._outcomes.append((now, ok))
        self._failures += not ok
        self._expire(now)
        total = len(self._outcomes)
        if self._failures >= self.min_failures and self._failures >= self.failure_rate * total:
            self._open(now)

    def release(self) -> None:
        """A call let through ended with no outcome (cancelled): free the probe slot."""
        self._probing = False

    def _expire(self, now: float) -> None:
        outcomes = self._outcomes
        while outcomes and outcomes[0][0] < now - self.window:
            _, ok = outcomes.popleft()
            self._failures -= not ok

    def _open(self, now: float) -> None:
        self._state = BreakerState.OPEN
        self._opened_at = now
        self._probing = False
        self.opened += 1

    def _close(self) -> None:
        self._state = BreakerState.CLOSED
        self._outcomes.clear()
        self._failures = 0
        self._probing = False


__all__ = ["BreakerState", "CircuitBreaker"]
