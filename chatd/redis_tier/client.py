"""`RedisTier`: the one Redis connection pool of an instance, and whether Redis is up.

Why a sync client in worker threads: redis-py's asyncio API runs on asyncio only (like
psycopg's async API, see docs/architecture.md), so the sync `redis.Redis` runs in
`trio.to_thread.run_sync`, with a `trio.CapacityLimiter` sized to the connection pool. A hop
costs ~0.2 ms of CPU (measured on this kind of machine): callers batch commands per hop
(pipelines, one Lua script per check) and keep per-message work local (see `ratelimit`).

Why an up/down state: Redis is an optional tier, never a single point of failure. Every call
is bounded by `timeout` (connect and each answer); a call that fails marks the tier *down*, and
while down every call raises `RedisUnavailable` at once, without touching the network, so a
dead Redis costs callers nothing: they fall back to what this instance knows. `run` (the
supervisor's ``redis`` part) pings a down Redis again after `retry_initial` seconds, doubling
up to `retry_max`, and marks it up on the first answer.

Counters (`calls`, `errors`, `up`) are plain attributes read by `chatd.observability`;
`observe_latency` is called with each call's seconds (the latency histogram).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final, TypeVar

import redis
import trio

from chatd.redis_tier.batch import ScriptBatcher
from chatd.redis_tier.errors import RedisUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_KEY_PREFIX: Final = "chatd:"
DEFAULT_POOL_SIZE: Final = 8
DEFAULT_TIMEOUT: Final = 0.25
DEFAULT_RETRY_INITIAL: Final = 0.5
DEFAULT_RETRY_MAX: Final = 10.0


class RedisTier:
    """A bounded pool of connections to one Redis, with an up/down state and key prefix.

    `call(fn)` runs ``fn(client)`` (a sync `redis.Redis`) in a worker thread and returns its
    result, or raises `RedisUnavailable` — at once while the tier is down. Keys written by any
    feature go through `key()`, so one Redis serves several deployments (and tests).
    """

    def __init__(
        self,
        url: str,
        *,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        pool_size: int = DEFAULT_POOL_SIZE,
        timeout: float = DEFAULT_TIMEOUT,
        retry_initial: float = DEFAULT_RETRY_INITIAL,
        retry_max: float = DEFAULT_RETRY_MAX,
    ) -> None:
        self.url = url
        self.prefix = key_prefix
        self.timeout = timeout
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        pool = redis.ConnectionPool.from_url(
            url,
            max_connections=pool_size,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            health_check_interval=0,
        )
        # No retries inside redis-py (a pool's connections default to none): a failure must
        # reach us at once (we fall back), and the reconnect is paced by `run`.
        self.client = redis.Redis(connection_pool=pool)
        self._limiter = trio.CapacityLimiter(pool_size)
        #: False until the first ping answers, and after any failed call until one does.
        self.up = False
        self._went_down = trio.Event()
        self._came_up = trio.Event()
        self.calls = 0
        self.errors = 0
        self.observe_latency: Callable[[float], None] | None = None
        #: Why the latest ping failed (for ``chatd check-config --connect``).
        self.last_error = ""
        #: Lua scripts for many tasks, one pipeline per hop (batch.py); loaded on each up.
        self.scripts = ScriptBatcher(self)

    def key(self, *parts: str) -> str:
        """The prefixed key ``{prefix}{part}:{part}...``."""
        return self.prefix + ":".join(parts)

    def script(self, source: str) -> redis.commands.core.Script:
        """A Lua script bound to this client (EVALSHA, loaded again when Redis forgot it)."""
        return self.client.register_script(source)

    async def call(self, fn: Callable[[redis.Redis], T]) -> T:
        """``fn(client)`` in a worker thread: its result, or `RedisUnavailable`.

        While the tier is down this raises at once. Waiting for a free connection is bounded
        by `timeout` too: a slow Redis never queues callers behind it.
        """
        if not self.up:
            raise RedisUnavailable()
        started = time.perf_counter()
        self.calls += 1
        try:
            with trio.fail_after(self.timeout):
                await self._limiter.acquire()
        except trio.TooSlowError:
            self.errors += 1
            raise RedisUnavailable("redis busy: no free connection") from None
        try:
            result = await trio.to_thread.run_sync(fn, self.client)
        except redis.RedisError as exc:
            self.errors += 1
            if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
                self._mark_down(exc)
            else:
                log.error("redis: command failed: %r", exc)
            raise RedisUnavailable(f"redis unavailable ({type(exc).__name__})") from None
        finally:
            self._limiter.release()
        if self.observe_latency is not None:
            self.observe_latency(time.perf_counter() - started)
        return result

    async def check(self) -> None:
        """Readiness check (optional): one PING through `call` (so a Redis that died while
        idle is noticed); raises `RedisUnavailable` when down."""
        try:
            await self.call(lambda client: client.ping())
        except RedisUnavailable:
            raise RedisUnavailable("redis down: features fall back to this instance") from None

    async def ping(self) -> bool:
        """One PING (and the scripts loaded) bounded by `timeout`, whatever the state:
        whether Redis answered."""

        def hello() -> None:
            self.client.ping()
            self.scripts.load_all(self.client)

        try:
            with trio.fail_after(self.timeout * 2):
                await trio.to_thread.run_sync(hello)
        except (redis.RedisError, trio.TooSlowError) as exc:
            log.debug("redis: ping failed: %r", exc)
            self.last_error = (
                f"no answer within {self.timeout * 2:g} s"
                if isinstance(exc, trio.TooSlowError)
                else str(exc) or repr(exc)
            )
            return False
        return True

    async def aclose(self) -> None:
        """Close the pool's connections (a tier that was never `run`, e.g. a probe)."""
        # Redis.close() leaves a pool it was given open: disconnect it ourselves.
        await trio.to_thread.run_sync(self.client.connection_pool.disconnect)

    def _mark_down(self, exc: BaseException) -> None:
        if self.up:
            log.warning("redis: %r; falling back to local state until it answers again", exc)
        self.up = False
        self._went_down.set()

    def _mark_up(self) -> None:
        if not self.up:
            log.info("redis: up (%s)", self.prefix)
        self.up = True
        self._went_down = trio.Event()
        self._came_up.set()
        self._came_up = trio.Event()

    async def wait_up(self) -> None:
        """Return once the tier is up (at once if it is)."""
        if not self.up:
            await self._came_up.wait()

    async def run(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        """The ``redis`` part: the first ping (a down Redis does not stop the start: every
        feature works without it), the script batcher, and reconnect pings with backoff
        whenever it goes down. Reports ``redis=up`` or ``redis=down``."""
        if await self.ping():
            self._mark_up()
        else:
            log.warning(
                "redis: not reachable at start; running without the shared tier until it answers"
            )
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.scripts.run)
                task_status.started(f"redis={'up' if self.up else 'down'}")
                delay = self.retry_initial
                while True:
                    if self.up:
                        await self._went_down.wait()
                        delay = self.retry_initial
                    await trio.sleep(delay)
                    if await self.ping():
                        self._mark_up()
                    else:
                        delay = min(delay * 2, self.retry_max)
        finally:
            self.up = False
            with trio.CancelScope(shield=True):
                await self.aclose()


__all__ = ["RedisTier", "RedisUnavailable"]
