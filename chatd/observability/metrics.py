"""Every Prometheus metric chatd exports, in one place (``/metrics``, prefix ``chatd_``).

Two kinds of source:

- events the application reports as they happen (a message stored, a send refused by the rate
  limit, an outbox row published, an HTTP request answered): counters and histograms owned by
  `Metrics`, bumped through its small methods;
- state that components already keep as plain attributes (the STOMP runtime's `stats`, the
  store's pool, readiness, the counts of the outbox publisher, send committer and purger, the
  profile cache and breaker, the RabbitMQ bridge, SockJS sessions): read at scrape time by one
  custom collector, so those components need no prometheus import and no hot-path work. Each
  ``attach_*`` registers one component; a component that is not configured is simply never
  attached and its series are absent.

One `CollectorRegistry` per `Metrics` (never the process-global one): several servers in one
test process each export their own numbers. Values that need a store round trip (outbox
pending/dead) are refreshed by `refresh()`, which the ``/metrics`` route awaits before
rendering; a scrape never blocks the event loop on I/O.
"""

from __future__ import annotations

import gc
import logging
import platform
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol

import trio
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from chatd.release import version

log = logging.getLogger(__name__)

# The ``*_created`` series (one timestamp per counter and label set) double the output and
# nothing here reads them. Process-wide in prometheus_client; chatd is the only user.
disable_created_metrics()  # type: ignore[no-untyped-call]

PREFIX = "chatd"
CONTENT_TYPE = CONTENT_TYPE_LATEST
#: Seconds: sub-millisecond (SQLite, warm pool) to a few seconds (a struggling database).
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
#: Outbox publish latency is measured from the row's commit: polling and backoff stretch it.
PUBLISH_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)
BREAKER_STATES = ("closed", "open", "half_open")
#: Seconds `refresh()` waits for the store's outbox counts before exporting the last ones.
REFRESH_TIMEOUT = 2.0

Source = Callable[[], Iterable[Metric]]


class OutboxStats(Protocol):
    async def outbox_stats(self) -> tuple[int, int]: ...


# What each component shows metrics (read at scrape time; the components import no
# prometheus): attributes and methods only, so any object with them will do.


class Stats(Protocol):
    """`stomp.trio.RuntimeStats`."""

    @property
    def frames_in(self) -> Mapping[str, int]: ...
    @property
    def frames_out(self) -> Mapping[str, int]: ...
    @property
    def errors(self) -> Mapping[str, int]: ...
    @property
    def messages_out(self) -> int: ...
    @property
    def sessions_open(self) -> int: ...
    @property
    def slow_consumers(self) -> int: ...


class HasStats(Protocol):
    """`stomp.trio.BrokerRuntime`."""

    @property
    def stats(self) -> Stats: ...


class ReadinessState(Protocol):
    """`chatd.services.health.Readiness`."""

    @property
    def started(self) -> bool: ...
    @property
    def draining(self) -> bool: ...
    @property
    def last_ready(self) -> bool | None: ...


class StoreGauges(OutboxStats, Protocol):
    """A `chatd.storage.Store`: ``pool_usage() -> (in_use, size, waiting)`` for the DB pool
    gauges, the outbox counts for `refresh()`."""

    def pool_usage(self) -> tuple[int, int, int]: ...


class Publishing(Protocol):
    """The outbox publisher or the send committer (`retried` and `dead`: the publisher's)."""

    @property
    def published(self) -> int: ...


class Committing(Protocol):
    """`chatd.services.committer.SendCommitter`."""

    @property
    def queued(self) -> int: ...
    @property
    def max_queued(self) -> int: ...
    @property
    def max_backlog(self) -> int: ...
    @property
    def batches(self) -> int: ...
    @property
    def refused_by(self) -> Mapping[str, int]: ...
    def backlog(self) -> int: ...


class Purging(Protocol):
    """`chatd.outbox.OutboxPurger`."""

    @property
    def purged(self) -> int: ...


class ProfileCounts(Protocol):
    """`chatd.profiles.CachedProfiles` (`stale` and `rejected` when it has them)."""

    @property
    def hits(self) -> int: ...
    @property
    def misses(self) -> int: ...


class HasState(Protocol):
    """The profile circuit breaker: `state` an enum (or name) of `BREAKER_STATES`."""

    @property
    def state(self) -> object: ...


class RedisState(Protocol):
    """`chatd.redis_tier.RedisTier`."""

    @property
    def up(self) -> bool: ...
    @property
    def calls(self) -> int: ...
    @property
    def errors(self) -> int: ...


class SharedLimits(Protocol):
    """`chatd.redis_tier.SharedRateLimiter`."""

    @property
    def leased(self) -> int: ...
    @property
    def checked(self) -> int: ...
    @property
    def fallbacks(self) -> int: ...


class PresenceState(Protocol):
    """`chatd.presence.PresenceService`."""

    @property
    def local_users(self) -> int: ...
    @property
    def announced(self) -> int: ...
    @property
    def failures(self) -> int: ...


class Bridged(Protocol):
    """`chatd.bridge.RabbitBridge`."""

    @property
    def connected(self) -> bool: ...
    @property
    def published(self) -> int: ...
    @property
    def consumed(self) -> int: ...
    @property
    def duplicates(self) -> int: ...
    @property
    def bindings(self) -> int: ...


def _name(suffix: str) -> str:
    return f"{PREFIX}_{suffix}"


def _counter(suffix: str, text: str, value: float) -> CounterMetricFamily:
    """A label-less counter read at scrape time."""
    return CounterMetricFamily(_name(suffix), text, value=value)


def _gauge(suffix: str, text: str, value: float) -> GaugeMetricFamily:
    """A label-less gauge read at scrape time."""
    return GaugeMetricFamily(_name(suffix), text, value=value)


class _Components(Collector):
    """Reads registered components' attributes at scrape time (see the module docstring)."""

    def __init__(self) -> None:
        self.sources: dict[str, Source] = {}

    def collect(self) -> Iterator[Metric]:
        for name, source in list(self.sources.items()):
            try:
                yield from source()
            except Exception:  # one broken source must not take the whole scrape down
                log.exception("metrics source %s failed", name)


class Metrics:
    """The metrics of one chatd instance, and the registry `render()` exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.messages_sent = Counter(
            _name("messages_sent"),
            "Messages stored (not repeats), by how they were sent.",
            ["path"],
            registry=r,
        )
        self.send_latency = Histogram(
            _name("send_latency_seconds"),
            "Time from receiving a send to the message being committed, by path.",
            ["path"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._send_children: dict[str, tuple[Any, Any]] = {}
        self.rate_limited = Counter(
            _name("rate_limit_refusals"),
            "Sends refused by the per-user rate limits, by path.",
            ["path"],
            registry=r,
        )
        self.outbox_pending = Gauge(
            _name("outbox_pending"), "Outbox rows not yet published (and not dead).", registry=r
        )
        self.outbox_dead = Gauge(
            _name("outbox_dead"), "Outbox rows given up after the last retry.", registry=r
        )
        self.outbox_publish_latency = Histogram(
            _name("outbox_publish_latency_seconds"),
            "Time from an outbox row's commit to the sink accepting it.",
            buckets=PUBLISH_BUCKETS,
            registry=r,
        )
        self.websocket_sessions = Gauge(
            _name("websocket_sessions_open"),
            "STOMP-over-WebSocket connections open now.",
            registry=r,
        )
        self.http_requests = Counter(
            _name("http_requests"),
            "HTTP requests answered, by method and status code.",
            ["method", "status"],
            registry=r,
        )
        self.bridge_confirm_latency = Histogram(
            _name("bridge_confirm_latency_seconds"),
            "Time from publishing to RabbitMQ to its publisher confirm.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.gc_pause = Histogram(
            _name("gc_pause_seconds"),
            "Time a Python garbage collection stopped every thread (the event loop too), by "
            "generation.",
            ["generation"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.redis_latency = Histogram(
            _name("redis_latency_seconds"),
            "Time of one call to the Redis tier (thread hop included), answered calls only.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        Info(
            _name("build"), "The chatd release and Python running this instance.", registry=r
        ).info({"version": version(), "python": platform.python_version()})
        self._components = _Components()
        r.register(self._components)
        self._outbox_source: OutboxStats | None = None

    # -- events --------------------------------------------------------------------------------

    def message_sent(self, path: str, seconds: float) -> None:
        """A message was stored through `path` ("rest" | "stomp") in `seconds`."""
        children = self._send_children.get(path)
        if children is None:  # labels() looks the child up under a lock: once per path
            children = self._send_children[path] = (
                self.messages_sent.labels(path),
                self.send_latency.labels(path),
            )
        children[0].inc()
        children[1].observe(seconds)

    def send_refused(self, path: str) -> None:
        """A send through `path` was refused by a rate limit (429 / STOMP error queue)."""
        self.rate_limited.labels(path).inc()

    def outbox_published(self, latencies: Iterable[float]) -> None:
        """Outbox rows were accepted by the sink, each `latency` seconds after its commit."""
        for seconds in latencies:
            self.outbox_publish_latency.observe(max(0.0, seconds))

    # -- components read at scrape time --------------------------------------------------------

    def add_source(self, name: str, source: Source) -> None:
        """Export what `source()` yields on every scrape (replaces a source of that name)."""
        self._components.sources[name] = source

    def attach_runtime(self, runtime: HasStats) -> None:
        """The STOMP runtime's `stats` (`stomp.trio.RuntimeStats`): frames, ERRORs, sessions."""
        stats = runtime.stats

        def source() -> Iterator[Metric]:
            frames_in = CounterMetricFamily(
                _name("stomp_frames_in"), "STOMP frames received, by command.", labels=["command"]
            )
            for command, count in sorted(stats.frames_in.items()):
                frames_in.add_metric([command], count)
            frames_out = CounterMetricFamily(
                _name("stomp_frames_out"),
                "STOMP frames queued to clients, by command.",
                labels=["command"],
            )
            for command, count in sorted(stats.frames_out.items()):
                frames_out.add_metric([command], count)
            errors = CounterMetricFamily(
                _name("stomp_errors"),
                "STOMP ERROR frames sent, by their message header.",
                labels=["reason"],
            )
            for reason, count in sorted(stats.errors.items()):
                errors.add_metric([reason], count)
            yield frames_in
            yield frames_out
            yield errors
            yield _counter(
                "delivered_frames",
                "MESSAGE frames queued to subscribers.",
                stats.messages_out,
            )
            yield _gauge(
                "stomp_sessions_open",
                "STOMP sessions open now, every transport.",
                stats.sessions_open,
            )
            yield _counter(
                "stomp_slow_consumers",
                "STOMP sessions closed for not reading.",
                stats.slow_consumers,
            )

        self.add_source("runtime", source)

    def attach_readiness(self, readiness: ReadinessState) -> None:
        """`chatd_ready`: 1 when the latest ``/health/ready`` probe answered 200 and the
        instance is not draining since (probes run the checks; a scrape only reads)."""

        def source() -> Iterator[Metric]:
            ready = readiness.started and not readiness.draining and readiness.last_ready is True
            yield _gauge(
                "ready",
                "1 when the latest readiness probe passed (not draining).",
                1.0 if ready else 0.0,
            )

        self.add_source("readiness", source)

    def attach_store(self, store: StoreGauges) -> None:
        """The store: DB connections in use (`pool_usage()`), outbox counts via `refresh()`."""
        self._outbox_source = store

        def source() -> Iterator[Metric]:
            in_use, size, waiting = store.pool_usage()
            yield _gauge(
                "db_pool_in_use",
                "Database connections (or worker slots) in use.",
                in_use,
            )
            yield _gauge(
                "db_pool_size",
                "Database connections (or worker slots) available in all.",
                size,
            )
            yield _gauge(
                "db_pool_waiting",
                "Store calls waiting for a database connection (or worker slot).",
                waiting,
            )

        self.add_source("store", source)

    def attach_publisher(self, *publishers: Publishing) -> None:
        """The `published`, `retried` and `dead` counts of whatever publishes outbox rows (the
        outbox publisher, and the send committer delivering right after commit), summed."""

        def source() -> Iterator[Metric]:
            for attr, text in (
                ("published", "Outbox rows accepted by the sink."),
                ("retried", "Outbox publish attempts that failed and retry."),
                ("dead", "Outbox rows this instance gave up on."),
            ):
                yield CounterMetricFamily(
                    _name(f"outbox_{attr}"),
                    text,
                    value=sum(getattr(p, attr, 0) for p in publishers),
                )

        self.add_source("publisher", source)

    def attach_committer(self, committer: Committing) -> None:
        """The send committer's queue (`queued`, `max_queued`), backlog, `batches` and
        `refused_by` (sends turned away busy, by reason)."""

        def source() -> Iterator[Metric]:
            yield _gauge(
                "send_queue",
                "Sends waiting to be stored with the next batch.",
                committer.queued,
            )
            yield _gauge(
                "send_queue_limit",
                "Sends that may wait before new ones are refused (503).",
                committer.max_queued,
            )
            yield _gauge(
                "delivery_backlog",
                "Outbox rows this instance wrote and has not delivered yet.",
                committer.backlog(),
            )
            yield _gauge(
                "delivery_backlog_limit",
                "Delivery backlog past which sends are refused (503).",
                committer.max_backlog,
            )
            yield _counter(
                "send_batches",
                "Transactions that stored a batch of sends.",
                committer.batches,
            )
            busy = CounterMetricFamily(
                _name("sends_refused_busy"),
                "Sends refused busy (503), by reason: queue full, delivery backlog full, "
                "would wait past max_send_wait_ms (late).",
                labels=["reason"],
            )
            for reason, count in committer.refused_by.items():
                busy.add_metric([reason], count)
            yield busy

        self.add_source("committer", source)

    def attach_purger(self, purger: Purging) -> None:
        """The outbox purger's `purged` count."""

        def source() -> Iterator[Metric]:
            yield _counter(
                "outbox_purged",
                "Sent outbox rows deleted after the retention period.",
                purger.purged,
            )

        self.add_source("purger", source)

    def attach_profiles(
        self, cache: ProfileCounts | None = None, breaker: HasState | None = None
    ) -> None:
        """The profile cache (`hits`, `misses`) and circuit breaker (`state`: a name or an enum
        whose value/name is one of `BREAKER_STATES`); either may be None."""

        def source() -> Iterator[Metric]:
            if cache is not None:
                yield _counter(
                    "profile_cache_hits",
                    "Profile look-ups answered from the cache.",
                    cache.hits,
                )
                yield _counter(
                    "profile_cache_misses",
                    "Profile look-ups that went to the profile service.",
                    cache.misses,
                )
                for attr, text in (
                    ("stale", "Profiles served past their TTL because the service failed."),
                    ("rejected", "Look-ups refused at once by the open breaker."),
                ):
                    if hasattr(cache, attr):
                        yield CounterMetricFamily(
                            _name(f"profile_cache_{attr}"), text, value=getattr(cache, attr)
                        )
                shared = getattr(cache, "shared", None)  # the second level in Redis
                if shared is not None:
                    yield _counter(
                        "profile_shared_hits",
                        "Local cache misses answered by the shared cache in Redis.",
                        shared.hits,
                    )
                    yield _counter(
                        "profile_shared_misses",
                        "Local cache misses the shared cache could not answer (or Redis down).",
                        shared.misses,
                    )
            if breaker is not None:
                current = _state_name(breaker.state)
                family = GaugeMetricFamily(
                    _name("profile_breaker_state"),
                    "Profile service circuit breaker: 1 for the state it is in.",
                    labels=["state"],
                )
                for state in BREAKER_STATES:
                    family.add_metric([state], 1.0 if state == current else 0.0)
                yield family

        self.add_source("profiles", source)

    def attach_bridge(self, bridge: Bridged) -> None:
        """The RabbitMQ bridge's `connected` flag, what it published and consumed, and its
        bindings (its confirm latency goes to `bridge_confirm_latency.observe`)."""

        def source() -> Iterator[Metric]:
            yield _gauge(
                "bridge_connected",
                "1 while the RabbitMQ bridge is connected.",
                1.0 if bridge.connected else 0.0,
            )
            yield _counter("bridge_published", "Outbox rows RabbitMQ confirmed.", bridge.published)
            yield _counter(
                "bridge_consumed",
                "Messages taken from this instance's RabbitMQ queue.",
                bridge.consumed,
            )
            yield _counter(
                "bridge_duplicates",
                "Consumed messages dropped as already delivered here.",
                bridge.duplicates,
            )
            yield _gauge(
                "bridge_bindings",
                "Routing keys bound to this instance's RabbitMQ queue.",
                bridge.bindings,
            )

        self.add_source("bridge", source)

    def attach_redis(self, tier: RedisState) -> None:
        """The Redis tier's `up` flag and its `calls` and `errors` counts (its latency goes
        to `redis_latency.observe`)."""

        def source() -> Iterator[Metric]:
            yield _gauge(
                "redis_up",
                "1 while the Redis tier answers (0: features run locally).",
                1.0 if tier.up else 0.0,
            )
            yield CounterMetricFamily(
                _name("redis_calls"), "Calls made to the Redis tier.", value=tier.calls
            )
            yield _counter(
                "redis_errors",
                "Calls to the Redis tier that failed or timed out.",
                tier.errors,
            )

        self.add_source("redis", source)

    def attach_shared_limits(self, limiter: SharedLimits) -> None:
        """How the shared rate limiter decided sends: on a leased token (no I/O), with a
        round trip to Redis, or locally because Redis was down."""

        def source() -> Iterator[Metric]:
            family = CounterMetricFamily(
                _name("rate_limit_shared_checks"),
                "Sends checked by the shared rate limiter, by how they were decided.",
                labels=["how"],
            )
            family.add_metric(["lease"], limiter.leased)
            family.add_metric(["redis"], limiter.checked)
            family.add_metric(["local"], limiter.fallbacks)
            yield family

        self.add_source("shared_limits", source)

    def attach_presence(self, presence: PresenceState) -> None:
        """Users online on this instance (grace periods included), presence updates sent to
        peers, and updates dropped because the store could not list the peers."""

        def source() -> Iterator[Metric]:
            yield _gauge(
                "presence_local_users",
                "Users with a STOMP session here (or in their grace period).",
                presence.local_users,
            )
            yield _counter(
                "presence_updates",
                "Presence updates published to peers' connections.",
                presence.announced,
            )
            yield _counter(
                "presence_failures",
                "Presence updates not sent: the store could not list peers.",
                presence.failures,
            )

        self.add_source("presence", source)

    def attach_sockjs(self, count: Callable[[], int]) -> None:
        """SockJS sessions open now, as `count()` says."""

        def source() -> Iterator[Metric]:
            yield GaugeMetricFamily(
                _name("sockjs_sessions_open"), "SockJS sessions open now.", value=count()
            )

        self.add_source("sockjs", source)

    # -- export ----------------------------------------------------------------------------

    async def refresh(self) -> None:
        """Update the values that need the store (outbox pending/dead), bounded in time; on
        failure the last values stay and the failure is logged, never raised."""
        store = self._outbox_source
        if store is None:
            return
        try:
            with trio.fail_after(REFRESH_TIMEOUT):
                pending, dead = await store.outbox_stats()
        except Exception as exc:
            log.warning("metrics: outbox counts unavailable: %s", exc)
            return
        self.outbox_pending.set(pending)
        self.outbox_dead.set(dead)

    @contextmanager
    def watching_gc(self) -> Iterator[None]:
        """Time every garbage collection while the block runs (`gc_pause`): a full one
        stops the event loop for as long as it takes to walk every live object."""
        pauses = {n: self.gc_pause.labels(str(n)) for n in range(3)}
        started = [0.0]

        def callback(phase: str, info: dict[str, int]) -> None:
            if phase == "start":
                started[0] = time.perf_counter()
            else:
                pauses[info["generation"]].observe(time.perf_counter() - started[0])

        gc.callbacks.append(callback)
        try:
            yield
        finally:
            gc.callbacks.remove(callback)

    def render(self) -> bytes:
        """The Prometheus text exposition of everything registered."""
        return generate_latest(self.registry)


def _state_name(state: Any) -> str:
    for candidate in (getattr(state, "value", None), getattr(state, "name", None), state):
        if isinstance(candidate, str):
            name = candidate.lower().replace("-", "_")
            if name in BREAKER_STATES:
                return name
    return str(state).lower()
