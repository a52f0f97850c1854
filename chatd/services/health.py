"""Readiness: whether this instance should receive traffic (``/health/ready``).

Ready means: every part the supervisor started reported itself up, the instance is not
draining, and the store answers a ping now. The supervisor flips the flags; later parts (the
broker, the RabbitMQ bridge) register their own named checks, so readiness grows with them
without the HTTP layer changing.

An *optional* check (the Redis tier: every feature on it falls back to local knowledge) is
reported as ``degraded (reason)`` when it fails and never makes the instance unready: taking
every instance out of the load balancer because a cache is down would turn a degradation
into an outage.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from chatd.domain.errors import ChatError
from chatd.storage.base import Store

DEFAULT_PING_TIMEOUT = 2.0
#: How a failing optional check is reported (``"degraded (reason)"``).
DEGRADED = "degraded"

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
        self._optional: set[str] = set()

    def add_check(self, name: str, check: Check, *, required: bool = True) -> None:
        """Run `check` on every readiness probe; it raises to say "not ready" (or, when not
        `required`, "degraded": reported, but the instance stays ready)."""
        self._checks[name] = check
        if required:
            self._optional.discard(name)
        else:
            self._optional.add(name)

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
            result = await self._run(check)
            if name in self._optional and result != "up":
                result = f"{DEGRADED} ({result})"
            results[name] = result
        checks_up = all(
            results[name] == "up" for name in self._checks if name not in self._optional
        )
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
