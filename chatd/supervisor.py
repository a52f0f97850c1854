"""The composition root: builds every part from the config and runs them in one nursery.

Start order (docs/architecture.md, Parts and start order): store (open + migrate) -> [JWKS
refresher] -> broker runtime -> [Redis tier] -> profiles -> [RabbitMQ bridge] -> presence ->
outbox publisher -> send committer -> [outbox purger] -> HTTP server (REST, ``/ws``, SockJS,
demo page) -> [raw STOMP TCP listener, if ``server.stomp_tcp_bind``].
Bracketed parts depend on the config; each is a `Part` in the list `build_parts` returns,
at its place in that order, and needs no other change here. Every part's ``run`` calls
``task_status.started(summary)`` once it is up; the summaries make the one ready line.

Schema: migrations are applied at start for both backends. They are idempotent and the
backends serialize concurrent migrators (PostgreSQL advisory lock, SQLite write lock), so
several instances starting together are safe, and a fresh database just works. ``chatd
migrate`` remains for operators who want to migrate ahead of a rollout.

Shutdown (SIGINT/SIGTERM, or the HTTP part ending on its own): readiness turns false and, after
a signal, everything keeps serving for ``server.drain_delay`` so load balancers stop routing
here first; then parts stop in reverse order, all within ``server.shutdown_grace``: the HTTP
server stops accepting and lets in-flight requests finish, later parts are asked to stop and
cancelled at the deadline; the store closes last, then the tracer (with ``[tracing]`` on)
exports its last spans. Whichever STOMP transport stops first (TCP,
then HTTP) first shuts the broker runtime down: every STOMP session gets an ERROR ("server
shutting down") and WebSocket close 1001, because Hypercorn would drop open WebSockets with
1006 and no close frame. Cancelling `serve` (tests) skips the draining but still closes the
store.
"""

from __future__ import annotations

import functools
import logging
import signal
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta

import trio

from chatd.auth.keys import KeyFileError, demo_token_key
from chatd.auth.service import ServiceTokens
from chatd.auth.tokens import TokenVerifier, verifier_from_config
from chatd.bridge import RabbitBridge
from chatd.config import Config, redact_url
from chatd.domain.models import ROWS_PER_MESSAGE
from chatd.domain.presence import EVENT_PRESENCE
from chatd.domain.rules import SendRateLimiter
from chatd.observability.logs import configure_logging, show_trace_ids
from chatd.observability.metrics import Metrics
from chatd.observability.tracing import FLUSH_TIMEOUT, Tracer, start_tracing
from chatd.outbox import OutboxPublisher, OutboxPurger, OutboxSink
from chatd.outbox.publisher import utc_now
from chatd.presence import LocalPresence, PresenceService, PresenceState
from chatd.presence.redis_state import RedisPresence
from chatd.presence.service import Publish
from chatd.profiles import (
    CachedProfiles,
    CircuitBreaker,
    LocalProfileProvider,
    ProfileProvider,
    RemoteProfileProvider,
    SharedProfileCache,
)
from chatd.realtime import ChatHooks, LocalDelivery, build_runtime
from chatd.realtime.handlers import AppHandlers
from chatd.redis_tier import RedisTier, SharedRateLimiter
from chatd.services import ChatService, Readiness
from chatd.services.committer import SendCommitter
from chatd.startup import StartupError, only_startup_errors
from chatd.startup.database import migrate_store, open_store
from chatd.startup.local import key_error, listening
from chatd.storage import Store
from stomp.trio import DEFAULT_SHUTDOWN_TIMEOUT, BrokerRuntime, serve_tcp

log = logging.getLogger("chatd")

Run = Callable[..., Awaitable[None]]


@dataclass(slots=True)
class Part:
    """One long-lived component: `run(task_status=...)` reports ``started(summary)`` when up.

    `stop` asks it to finish gracefully (default: nothing, it is cancelled at the deadline);
    `summary` is what it started with, e.g. ``"http=http://127.0.0.1:8080"``.
    """

    name: str
    run: Run
    stop: Callable[[], None] = lambda: None
    summary: str | None = None
    done: trio.Event = field(default_factory=trio.Event)
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)


@dataclass(slots=True)
class Components:
    """What the parts share.

    `runtime` is the one STOMP broker runtime every transport serves; `delivery` is how rows
    reach its subscribers; `committer` stores sends in batches (and, on one instance,
    delivers them right after the commit); `bridge` (with ``[rabbitmq]``) relays rows
    between instances and is then the outbox publisher's sink instead of `delivery`;
    `tracer` (with ``[tracing]`` on) is handed to every traced part.
    """

    config: Config
    store: Store
    profiles: ProfileProvider
    verifier: TokenVerifier
    limiter: SendRateLimiter
    services: ChatService
    readiness: Readiness
    runtime: BrokerRuntime
    delivery: LocalDelivery
    committer: SendCommitter
    presence: PresenceService
    metrics: Metrics = field(default_factory=Metrics)
    bridge: RabbitBridge | None = None
    redis: RedisTier | None = None
    tracer: Tracer | None = None


def build_profiles(config: Config, tier: RedisTier | None = None) -> ProfileProvider:
    """The profile provider `[profiles]` asks for: local, or the profile service behind a cache
    (with a second level in Redis when the tier is given) and a circuit breaker. Raises
    `KeyFileError` when the service key cannot be loaded."""
    p = config.profiles
    if p.provider == "local":
        return LocalProfileProvider()
    assert p.url is not None
    tokens = ServiceTokens.from_config(p)
    remote = RemoteProfileProvider(
        p.url, tokens, timeout=p.timeout, max_connections=p.max_connections
    )
    breaker = CircuitBreaker(
        min_failures=p.breaker_failures,
        failure_rate=p.breaker_failure_rate,
        window=p.breaker_window_seconds,
        reset_after=p.breaker_reset_seconds,
    )
    shared = SharedProfileCache(tier) if tier is not None else None
    return CachedProfiles(
        remote,
        breaker,
        ttl=p.cache_ttl,
        not_found_ttl=p.cache_not_found_ttl,
        max_size=p.cache_size,
        stale_if_error=p.stale_if_error,
        shared=shared,
    )


def profiles_part(components: Components) -> Part:
    """Owns the profile service client's connection pool: closed after HTTP has stopped."""
    profiles = components.profiles
    stopping = trio.Event()

    async def run(*, task_status: trio.TaskStatus[None]) -> None:
        try:
            task_status.started()
            await stopping.wait()
        finally:
            upstream = profiles.upstream if isinstance(profiles, CachedProfiles) else profiles
            if isinstance(upstream, RemoteProfileProvider):
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    await upstream.aclose()

    return Part("profiles", run, stop=stopping.set)


def build_redis(config: Config) -> RedisTier | None:
    """The shared Redis tier when ``[redis]`` is set (no I/O: its part connects)."""
    r = config.redis
    if r is None:
        return None
    return RedisTier(
        r.url,
        key_prefix=r.key_prefix,
        pool_size=r.pool_size,
        timeout=r.timeout,
        retry_initial=r.retry_initial_seconds,
        retry_max=r.retry_max_seconds,
    )


def redis_part(tier: RedisTier) -> Part:
    """The Redis tier: pings it at start and after it went down (a down Redis never stops
    the start); started before the profiles and the services that use it."""
    part = Part("redis", tier.run)
    part.stop = part.scope.cancel  # nothing to drain: calls in flight are bounded
    return part


async def build_components(
    config: Config, store: Store, *, tracer: Tracer | None = None
) -> Components:
    """Everything the parts need, around an opened store; blocking set-up runs in a thread.
    With a `tracer`, the send path records spans (chatd.observability.tracing)."""
    try:
        verifier = await trio.to_thread.run_sync(verifier_from_config, config)  # may fetch JWKS
    except KeyFileError as exc:
        raise key_error(exc, config) from exc
    limiter = SendRateLimiter.from_limits(config.limits)
    tier = build_redis(config)
    try:
        profiles = build_profiles(config, tier)
    except KeyFileError as exc:
        raise key_error(exc, config, service_key=True) from exc
    metrics = Metrics()
    # Built in dependency order, each part given what it needs. The one cycle: the hooks
    # publish into the runtime that calls them, so the runtime gets them last.
    runtime = build_runtime(config)
    delivery = LocalDelivery(runtime, tracer=tracer)
    direct = config.rabbitmq is None and config.outbox.direct_delivery
    committer = SendCommitter(
        store,
        lease_seconds=config.outbox.lease_seconds,
        max_queued=config.limits.max_queued_sends,
        max_backlog=config.limits.max_delivery_backlog,
        clock=utc_now,
        # one instance: deliver right after the commit
        sink=delivery if direct else None,
        tracer=tracer,
    )
    shared_limiter = None
    if tier is not None and config.redis is not None:
        shared_limiter = SharedRateLimiter(
            tier,
            limiter,
            lease_block=config.redis.rate_lease_block,
            lease_seconds=config.redis.rate_lease_seconds,
        )
    services = ChatService(
        store,
        profiles,
        limiter,
        limits=config.limits,
        observer=metrics,
        committer=committer,
        shared_limiter=shared_limiter,
        tracer=tracer,
    )
    readiness = Readiness()
    readiness.add_store(store)
    # A database migrated by a newer (or older) release than this code must not get traffic.
    readiness.add_check("migrations", store.check_schema)
    bridge = None
    if config.rabbitmq is not None:
        # within the publisher's budget per round (half a lease), with room to record it
        confirm_timeout = min(
            config.rabbitmq.confirm_timeout_seconds, 0.4 * config.outbox.lease_seconds
        )
        bridge = RabbitBridge(
            config.rabbitmq,
            delivery,
            confirm_timeout=confirm_timeout,
            dedupe_size=config.rabbitmq.dedupe_size,
            instance_id=None if tracer is None else tracer.instance_id,
            tracer=tracer,
        )
        bridge.observe_confirm = metrics.bridge_confirm_latency.observe
        readiness.add_check("bridge", bridge.check)
    handlers = AppHandlers(
        services, runtime, tracer=tracer, relay=None if bridge is None else bridge.relay_ephemeral
    )
    presence = build_presence(
        config,
        store,
        tier,
        None if bridge is None else bridge.instance_id,
        publish=functools.partial(handlers.publish, event=EVENT_PRESENCE),
    )
    runtime.hooks = ChatHooks(
        services,
        verifier,
        delivery,
        handlers,
        binder=bridge,
        presence=presence,
        close_on_expiry=config.auth.close_on_expiry,
    )
    runtime.on_principal_active = presence.principal_active
    if bridge is not None:
        runtime.on_destination_active = bridge.destination_active
    metrics.attach_committer(committer)
    metrics.attach_store(store)
    metrics.attach_runtime(runtime)
    metrics.attach_readiness(readiness)
    metrics.attach_presence(presence)
    if isinstance(profiles, CachedProfiles):
        metrics.attach_profiles(profiles, profiles.breaker)
    if tier is not None:
        # optional: a down Redis degrades features to this instance's knowledge, never
        # takes the instance out of the load balancer
        readiness.add_check("redis", tier.check, required=False)
        tier.observe_latency = metrics.redis_latency.observe
        metrics.attach_redis(tier)
    if shared_limiter is not None:
        metrics.attach_shared_limits(shared_limiter)
    if bridge is not None:
        metrics.attach_bridge(bridge)
    return Components(
        config,
        store,
        profiles,
        verifier,
        limiter,
        services,
        readiness,
        runtime,
        delivery,
        committer,
        presence,
        metrics,
        bridge,
        tier,
        tracer,
    )


def build_presence(
    config: Config,
    store: Store,
    tier: RedisTier | None = None,
    instance_id: str | None = None,
    *,
    publish: Publish | None = None,
) -> PresenceService:
    """Presence tracking, shared through Redis when the tier is on; its updates go out
    through `publish` (like typing notices: here, and relayed to the other instances)."""
    p = config.presence
    state: PresenceState = LocalPresence()
    if tier is not None:
        state = RedisPresence(tier, instance_id or uuid.uuid4().hex, ttl=p.ttl_seconds)
    return PresenceService(
        store,
        state,
        enabled=p.enabled,
        grace=p.grace_seconds,
        ttl=p.ttl_seconds,
        max_peers=p.max_peers,
        publish=publish,
    )


def presence_part(components: Components) -> Part:
    """Presence: started before any transport (which report sessions to it), stopped after
    them, when it lets this instance's users lapse after the grace period."""
    presence = components.presence
    return Part("presence", presence.run, stop=presence.stop)


def session_grace(config: Config) -> float:
    """Seconds STOMP sessions get to receive their shutdown ERROR: at most half the grace, so
    the HTTP drain after it keeps the rest."""
    return min(DEFAULT_SHUTDOWN_TIMEOUT, config.server.shutdown_grace / 2)


def broker_part(components: Components) -> Part:
    """The broker runtime: nothing to serve by itself (transports and the publisher use it),
    but its stop is the last chance to tell sessions a transport did not close."""
    runtime = components.runtime
    stopping = trio.Event()

    async def run(*, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()  # no summary: the ready line names the listeners
        await stopping.wait()
        await runtime.shutdown(session_grace(components.config))

    return Part("broker", run, stop=stopping.set)


def stomp_tcp_part(components: Components) -> Part:
    """Raw STOMP over TCP on ``server.stomp_tcp_bind``, on the shared runtime."""
    c = components
    address = c.config.server.stomp_tcp_address
    assert address is not None
    stopping = trio.Event()

    async def run(*, task_status: trio.TaskStatus[str]) -> None:
        async with trio.open_nursery() as nursery:
            bind = c.config.server.stomp_tcp_bind or ""
            with listening(
                "stomp-tcp", bind, "[server] stomp_tcp_bind or CHATD_SERVER__STOMP_TCP_BIND"
            ):
                host, port = await nursery.start(
                    functools.partial(serve_tcp, backlog=c.config.server.listen_backlog),
                    c.runtime,
                    address[0],
                    address[1],
                )
            task_status.started(f"stomp=tcp://{host}:{port}")
            await stopping.wait()
            await c.runtime.shutdown(session_grace(c.config))
            nursery.cancel_scope.cancel()

    return Part("stomp-tcp", run, stop=stopping.set)


def http_part(components: Components) -> Part:
    """The HTTP server (``/api``, ``/health``, ``/ws``), graceful on `stop`: STOMP sessions
    are closed with 1001 before Hypercorn starts its own drain."""
    from chatd.http import create_app
    from chatd.http.server import serve_http
    from chatd.http.ws import websocket_handler

    c = components
    try:
        demo_key = demo_token_key(c.config)
    except KeyFileError as exc:
        raise key_error(exc, c.config) from exc
    app = create_app(
        c.services,
        c.verifier,
        c.config,
        readiness=c.readiness,
        runtime=c.runtime,
        metrics=c.metrics,
        demo_token_key=demo_key,
        presence=c.presence,
        tracer=c.tracer,
    )
    stopping = trio.Event()

    async def shutdown_trigger() -> None:
        await stopping.wait()
        await c.runtime.shutdown(session_grace(c.config))

    async def run(*, task_status: trio.TaskStatus[str]) -> None:
        async with trio.open_nursery() as nursery:
            serve = functools.partial(
                serve_http,
                app,
                c.config,
                shutdown_trigger=shutdown_trigger,
                websocket=websocket_handler(
                    c.runtime,
                    c.metrics,
                    one_frame_per_message=(c.config.server.ws_one_frame_per_message),
                ),
            )
            with listening("http", c.config.server.bind, "--bind or CHATD_BIND"):
                binds: list[str] = await nursery.start(serve)
            task_status.started("http=" + ",".join(binds))

    return Part("http", run, stop=stopping.set)


def bridge_part(bridge: RabbitBridge) -> Part:
    """The RabbitMQ bridge: started before the outbox publisher (its sink), stopped after."""
    return Part("bridge", bridge.run, stop=bridge.stop)


def outbox_part(components: Components, sink: OutboxSink) -> Part:
    """The outbox publisher feeding `sink` (the local broker's delivery, or the RabbitMQ
    bridge); `stop` lets the batch in hand finish. Never add it without a real sink: the
    publisher marks every row the sink accepts as delivered."""
    # a claim holds at least one commit's rows of a session (a whole batch send)
    committer = components.committer
    largest = max(committer.max_batch, components.config.limits.max_batch)
    publisher = OutboxPublisher(
        components.store,
        sink,
        components.config.outbox,
        min_claim=ROWS_PER_MESSAGE * largest,
        tracer=components.tracer,
    )
    publisher.on_published = components.metrics.outbox_published
    components.committer.on_published = components.metrics.outbox_published
    components.metrics.attach_publisher(publisher, components.committer)
    committer.backlog = delivery_backlog(committer, publisher, shared=components.bridge is not None)
    # rows the committer delivered were leased; once marked, what waited behind them may go
    components.committer.on_marked = publisher.nudge
    return Part("outbox", publisher.run, stop=publisher.stop)


def delivery_backlog(
    committer: SendCommitter, publisher: OutboxPublisher, *, shared: bool
) -> Callable[[], int]:
    """How many outbox rows wait for delivery, as the committer's `max_backlog` sees it.

    One instance: what this process wrote and neither its committer nor its publisher
    delivered yet. Several (`shared`, RabbitMQ): the publishers take each other's rows, so
    that difference drifts without bound for an instance whose publisher is slower or cut off
    (the soak saw one refuse every send with an empty outbox); it is the store's pending
    count instead, read by the publisher every ``PENDING_REFRESH`` s, plus what this process
    wrote since the last read."""
    if not shared:
        return lambda: max(0, committer.rows_written - committer.published - publisher.published)
    read = [0, committer.rows_written]  # pending at the last read, rows written by then

    def store_pending(pending: int) -> None:
        read[:] = [pending, committer.rows_written]

    publisher.on_store_pending = store_pending
    return lambda: read[0] + committer.rows_written - read[1]


def committer_part(components: Components) -> Part:
    """The send committer: started before HTTP and the STOMP listeners (which send through
    it), stopped after them; `stop` stores what is queued first."""
    committer = components.committer
    return Part("committer", committer.run, stop=committer.stop)


def purge_part(components: Components) -> Part | None:
    """Deletes sent outbox rows after ``outbox.retention_hours`` (None when 0: keep them)."""
    hours = components.config.outbox.retention_hours
    if hours <= 0:
        return None
    purger = OutboxPurger(components.store, timedelta(hours=hours), utc_now)
    components.metrics.attach_purger(purger)
    part = Part("outbox-purge", purger.run)
    part.stop = part.scope.cancel  # a purge in flight is a batch of deletes: safe to cut
    return part


def jwks_part(components: Components) -> Part | None:
    """Refreshes the JWKS every ``auth.jwks_cache_seconds`` (None without a JWKS URL)."""
    jwks = components.verifier.jwks
    if jwks is None:
        return None
    part = Part("jwks", jwks.run)
    part.stop = part.scope.cancel  # nothing to drain: a refresh in flight can just stop
    return part


def build_parts(components: Components) -> list[Part]:
    """The parts to start, in start order (see the module docstring for where new ones go):
    broker runtime, the profile client, the RabbitMQ bridge when configured, the outbox
    publisher (into the bridge, else straight into the local delivery), HTTP with ``/ws``,
    and the raw STOMP listener when configured; the JWKS refresher first when configured."""
    bridge = components.bridge
    parts = [broker_part(components)]
    if components.redis is not None:
        parts.append(redis_part(components.redis))
    parts.append(profiles_part(components))
    if bridge is not None:
        parts.append(bridge_part(bridge))
    parts.append(presence_part(components))
    parts.append(outbox_part(components, bridge if bridge is not None else components.delivery))
    parts.append(committer_part(components))
    if (purge := purge_part(components)) is not None:
        parts.append(purge)
    parts.append(http_part(components))
    if (jwks := jwks_part(components)) is not None:
        parts.insert(0, jwks)
    if components.config.server.stomp_tcp_address is not None:
        parts.append(stomp_tcp_part(components))
    return parts


def _configure_logging(config: Config) -> None:
    # Only when nobody configured logging (the CLI); a host application or pytest keeps its own.
    configure_logging(config.logging)


async def _watch_signals(stop: trio.Event, *, task_status: trio.TaskStatus[None]) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for signum in signals:
            log.info("received %s: draining", signal.Signals(signum).name)
            stop.set()
            return


async def _run_part(part: Part, stop: trio.Event, *, task_status: trio.TaskStatus[str]) -> None:
    try:
        with part.scope:
            await part.run(task_status=task_status)
    finally:
        part.done.set()
        stop.set()  # a part that ends by itself ends the whole server


async def _drain_delay(seconds: float) -> None:
    # Readiness already answers 503; keep serving while load balancers notice and stop routing
    # here. A second signal during the wait does not shorten it: the grace after it is bounded.
    if seconds > 0:
        log.info("not ready; serving %g s more before closing the listeners", seconds)
        await trio.sleep(seconds)


async def _shutdown(parts: list[Part], grace: float) -> None:
    deadline = trio.current_time() + grace
    for part in reversed(parts):
        part.stop()
        with trio.move_on_at(deadline):
            await part.done.wait()
        if not part.done.is_set():
            log.warning("%s did not stop within %g s: cancelling it", part.name, grace)
        part.scope.cancel()
        await part.done.wait()


async def serve(
    config: Config,
    *,
    handle_signals: bool = True,
    span_exporter: object | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run chatd until SIGINT/SIGTERM (or cancellation); return once everything is closed.

    Reports ``task_status.started(summaries)`` — e.g. ``["http=http://127.0.0.1:41234",
    ...]`` — after logging the ready line, so tests can serve on port 0 in-process. Raises
    `StartupError` (unwrapped from the nursery's exception group) for anything that keeps
    it from starting. `handle_signals` False leaves signal handling to the caller.
    `span_exporter` (tests: an OpenTelemetry in-memory exporter) replaces the OTLP exporter
    when ``[tracing]`` is on.
    """
    _configure_logging(config)
    tracer = None
    if config.tracing.enabled:
        tracer = start_tracing(config.tracing, exporter=span_exporter)
        show_trace_ids(tracer.ids)
        log.info(
            "tracing on: spans of service %s (instance %s) go to %s",
            config.tracing.service_name,
            tracer.instance_id,
            "the given exporter"
            if span_exporter is not None
            else redact_url(config.tracing.endpoint or "the default endpoint"),
        )
    try:
        await _serve(config, tracer, handle_signals=handle_signals, task_status=task_status)
    finally:
        if tracer is not None:
            await _stop_tracing(tracer)


async def _stop_tracing(tracer: Tracer) -> None:
    """Export the last spans (shielded, at most `FLUSH_TIMEOUT`: the SDK's shutdown blocks,
    so it runs in a worker thread, left behind if the collector does not answer in time)."""
    show_trace_ids(None)
    with trio.CancelScope(shield=True), trio.move_on_after(FLUSH_TIMEOUT) as waited:
        await trio.to_thread.run_sync(tracer.shutdown, abandon_on_cancel=True)
    if waited.cancelled_caught:
        log.warning("tracing: the last spans were not exported within %g s", FLUSH_TIMEOUT)


async def _serve(
    config: Config,
    tracer: Tracer | None,
    *,
    handle_signals: bool,
    task_status: trio.TaskStatus[list[str]],
) -> None:
    store = await open_store(config)
    try:
        applied = await migrate_store(store, config.database)
        if applied:
            log.info("applied migrations: %s", ", ".join(applied))
        components = await build_components(config, store, tracer=tracer)
        with components.metrics.watching_gc():
            await _run_parts(components, handle_signals=handle_signals, task_status=task_status)
    except BaseExceptionGroup as group:  # a part failed to start: say what, not how nested
        if (error := only_startup_errors(group)) is None:
            raise
        raise error from error.__cause__
    finally:
        # Shielded: a cancelled serve (tests, Ctrl-C twice) must still release connections.
        with trio.CancelScope(shield=True):
            await store.aclose()
    log.info("chatd stopped")


async def _run_parts(
    components: Components,
    *,
    handle_signals: bool,
    task_status: trio.TaskStatus[list[str]],
) -> None:
    """Start the parts in order, report ready, and drain and stop them on SIGINT/SIGTERM
    (with `handle_signals`) or a part's end."""
    config, store = components.config, components.store
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        if handle_signals:
            await nursery.start(_watch_signals, stop)
        parts = build_parts(components)
        for part in parts:
            part.summary = await nursery.start(_run_part, part, stop)
        components.readiness.started = True
        summaries = [p.summary for p in parts if p.summary]
        extra = [f"store={store.backend}", f"profiles={config.profiles.provider}"]
        bridge = components.bridge
        state = "off" if bridge is None else "up" if bridge.connected else "connecting"
        extra.append(f"rabbitmq={state}")
        extra.append(components.presence.summary)
        if components.redis is None:
            extra.append("redis=off")
        log.info("chatd ready %s", " ".join(summaries + extra))
        log.debug("database %s", redact_url(config.database.url))
        task_status.started(summaries)

        await stop.wait()
        components.readiness.draining = True
        if not any(part.done.is_set() for part in parts):  # a dead part: nothing to drain
            await _drain_delay(config.server.drain_delay)
        await _shutdown(parts, config.server.shutdown_grace)
        nursery.cancel_scope.cancel()  # the signal watcher, if still waiting


__all__ = [
    "Components",
    "Part",
    "StartupError",
    "bridge_part",
    "broker_part",
    "build_components",
    "build_parts",
    "build_presence",
    "build_profiles",
    "build_redis",
    "delivery_backlog",
    "http_part",
    "jwks_part",
    "outbox_part",
    "presence_part",
    "profiles_part",
    "purge_part",
    "redis_part",
    "serve",
    "session_grace",
    "stomp_tcp_part",
]
