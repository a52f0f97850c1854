"""Readiness: whether this instance should receive traffic (``/health/ready``).

Ready means: every part the supervisor started reported itself up, the instance is not
draining, and the store answers a ping now. The supervisor flips the flags; later parts (the
broker, the RabbitMQ bridge) register their own named checks, so readiness grows with them
without the HTTP layer changing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from chatd.domain.errors import ChatError
from chatd.storage.base import Store

DEFAULT_PING_TIMEOUT = 2.0

Check = Callable[[], Awaitable[None]]


class Readiness:
    """Named readiness checks plus the supervisor's started/draining flags."""

    def __init__(self, *, ping_timeout: float = DEFAULT_PING_TIMEOUT) -> None:
        self.started = False
        self.draining = False
        self.ping_timeout = ping_timeout
        #: The answer of the latest probe (None before the first): what metrics export, so a
        #: scrape never runs the checks itself.
        self.last_ready: bool | None = None
        self._checks: dict[str, Check] = {}

    def add_check(self, name: str, check: Check) -> None:
        """Run `check` on every readiness probe; it raises to say "not ready"."""
        self._checks[name] = check

    def add_store(self, store: Store) -> None:
        """Probe the store with one round trip (``store``)."""
        self.add_check("store", store.ping)

    async def probe(self) -> tuple[bool, dict[str, str]]:
        """(ready, status per check): each check is "up" or the reason it is not.

        Checks run one after another, each bounded by `ping_timeout`, so a hung dependency
        makes the probe slow by at most that much per check, never forever.
        """
        results: dict[str, str] = {}
        if not self.started:
            results["supervisor"] = "starting"
        elif self.draining:
            results["supervisor"] = "draining"
        for name, check in self._checks.items():
            results[name] = await self._run(check)
        checks_up = all(results[name] == "up" for name in self._checks)
        ready = self.started and not self.draining and checks_up
        self.last_ready = ready
        return ready, results

    async def _run(self, check: Check) -> str:
        try:
            with trio.fail_after(self.ping_timeout):
                await check()
        except trio.TooSlowError:
            return f"no answer within {self.ping_timeout:g} s"
        except ChatError as exc:
            return exc.message
        except Exception as exc:  # a probe must answer 503, never crash the request
            return f"{type(exc).__name__}"
        return "up"
