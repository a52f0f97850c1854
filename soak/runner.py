"""One soak run, start to end: private services, two chatd instances, the clients, the
scheduler, the faults, the samplers; then the settle phase and the data the checks need."""

from __future__ import annotations

import functools
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import trio

from bench.chatd_serve import tokens_for
from bench.targets import cpu_seconds, rss_bytes
from soak import faults as F
from soak.client import ClientRecord, Stats
from soak.cluster import Instance, error_lines, make_instances, redis_supported
from soak.services import (
    PrivatePostgres,
    PrivateRabbit,
    PrivateRedis,
    service_root,
)
from soak.shard import STATUS_EVERY, ClientSpec, ShardProcess, ShardSpec, SharedClock
from soak.transports import WS, XHR_POLLING, XHR_STREAMING
from tests.proxy import ProxyProcess

SAMPLE_EVERY = 10.0
GAUGE_WAIT = 8.0  # seconds the sampler waits for an instance's /metrics
TAIL = 20.0  # a fault starts only when the load runs this long after its hold


@dataclass
class Options:
    minutes: float
    clients: int
    rate: float
    fault_every: float
    hold: float
    pause: float
    warmup: float
    heartbeat_ms: int
    client_heartbeat_ms: int
    rest_share: float
    sockjs_share: float
    receipt_every: int
    redis: str  # auto | on | off
    workdir: Path
    seed: int
    generators: int  # load-generator processes (soak.shard)


@dataclass
class Sample:
    at: float
    instance: int
    pid: int
    rss: int
    fds: int
    cpu: float  # CPU seconds of the process so far
    backlog: int | None  # its chatd_delivery_backlog (what its sends are refused by)


@dataclass
class Outcome:
    """Everything the checks read."""

    options: Options
    redis: bool
    clients: list[ClientRecord]
    stats: Stats
    faults: list[F.Fault]
    samples: list[Sample]
    backlog: list[tuple[float, int]]
    rows: list[tuple[str, int, str, str]]  # session, seq, message id, client_msg_id
    instances: list[Instance]
    errors: list[tuple[str, float, str]]  # instance, unix time, line
    sending_started: float
    sending_seconds: float
    gen_cpu: list[float]  # each generator process's CPU seconds over the sending window
    loop_lag: list[list[float]]  # each generator process's event-loop lag samples
    unsettled: int
    notes: list[str] = field(default_factory=list)


def say(message: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _db(url: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(url, autocommit=True, connect_timeout=3) as conn:
        cursor = conn.execute(sql.encode(), args)
        return list(cursor.fetchall()) if cursor.description else []


class Run:
    def __init__(self, options: Options) -> None:
        self.o = options
        self.shards: list[ShardProcess] = []
        self.faults: list[F.Fault] = []
        self.samples: list[Sample] = []
        self.backlog: list[tuple[float, int]] = []

    # -- data helpers -------------------------------------------------------------------------

    async def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]] | None:
        try:
            return await trio.to_thread.run_sync(_db, self.db_url, sql, *args)
        except Exception:  # PostgreSQL down (a fault): no figure this time
            return None

    async def pending_before(self, when: datetime) -> int | None:
        rows = await self.query(
            "SELECT count(*) FROM chat_message_outbox WHERE NOT processed "
            "AND NOT dead AND created_at <= %s",
            when,
        )
        return None if rows is None else int(rows[0][0])

    # -- the run ------------------------------------------------------------------------------

    def execute(self) -> Outcome:
        o = self.o
        random.seed(o.seed)
        o.workdir.mkdir(parents=True, exist_ok=True)
        root = service_root()
        try:
            return self._with_services(root)
        finally:
            shutil.rmtree(root, ignore_errors=True)

    def _with_services(self, root: Path) -> Outcome:
        o = self.o
        want_redis = o.redis == "on" or (o.redis == "auto" and redis_supported())
        say(
            "private PostgreSQL, RabbitMQ"
            + (", Redis" if want_redis else "")
            + " (this run's own copies)"
        )
        pg = PrivatePostgres.create(root / "postgres")
        pg.start()
        rabbit = PrivateRabbit.create(root / "rabbitmq")
        redis = PrivateRedis(root / "redis") if want_redis else None
        try:
            _db(pg.url, "CREATE DATABASE chatd_soak")
            self.db_url = pg.url.rsplit("/", 1)[0] + "/chatd_soak"
            rabbit.start()
            if redis is not None:
                redis.start()
            return trio.run(self._main, pg, rabbit, redis, clock=SharedClock())
        finally:
            if redis is not None:
                redis.stop()
            rabbit.stop()
            try:
                pg.stop()
            except Exception as exc:  # already stopped by a fault that failed half-way
                say(f"stopping PostgreSQL: {exc}")

    async def _main(
        self, pg: PrivatePostgres, rabbit: PrivateRabbit, redis: PrivateRedis | None
    ) -> Outcome:
        o = self.o
        async with trio.open_nursery() as nursery:
            proxy = await ProxyProcess.start(nursery, ("127.0.0.1", rabbit.port))
            proxied = f"amqp://guest:guest@127.0.0.1:{proxy.port}/%2F"
            instances = make_instances(
                o.workdir,
                count=2,
                database_url=self.db_url,
                rabbitmq_urls=[rabbit.url, proxied],
                redis_url=redis.url if redis else None,
                heartbeat_ms=o.heartbeat_ms,
            )
            try:
                outcome = await self._drive(
                    nursery,
                    instances,
                    F.Plant(
                        instances,
                        pg,
                        rabbit,
                        redis,
                        proxy,
                        cut_instance=1,
                        hold=o.hold,
                        pause=o.pause,
                    ),
                )
            finally:
                for inst in instances:
                    await trio.to_thread.run_sync(inst.stop)
            nursery.cancel_scope.cancel()
        outcome.errors = [
            (inst.name, t, line) for inst in instances for t, line in error_lines(inst.log)
        ]
        return outcome

    async def _drive(
        self, nursery: trio.Nursery, instances: list[Instance], plant: F.Plant
    ) -> Outcome:
        o = self.o
        for inst in instances:
            say(f"starting {inst.name} on port {inst.port}")
            await trio.to_thread.run_sync(inst.start)
        pairs = o.clients // 2
        emails = [f"soak{i}-{side}@example.com" for i in range(pairs) for side in "ab"]
        ttl = int(o.minutes * 60 + 3600)
        say(f"minting {len(emails)} tokens")
        tokens = await trio.to_thread.run_sync(
            lambda: tokens_for(instances[0].data_dir, emails, ttl)
        )
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=16)
        timeout = httpx.Timeout(60.0, connect=10.0)
        async with httpx.AsyncClient(limits=limits, timeout=timeout) as http:
            self.http = http
            say(f"opening {pairs} chat sessions")
            sessions = await self._sessions(http, instances[0], tokens, emails)
            specs = [
                ClientSpec(
                    i,
                    email,
                    token,
                    sessions[i // 2],
                    i % len(instances),  # the two users of a pair on different instances
                    "127.0.0.1",
                    instances[i % len(instances)].port,
                    self._kind(i),
                )
                for i, (email, token) in enumerate(zip(emails, tokens, strict=True))
            ]
            self.shards = self._shards(specs)
            async with trio.open_nursery() as load:
                for shard in self.shards:
                    await load.start(shard.run)
                say(f"{len(specs)} clients connecting ({len(self.shards)} generator processes)")
                with trio.move_on_after(180):
                    while sum(s.connected for s in self.shards) < len(specs):  # noqa: ASYNC110 (status lines of every shard)
                        await trio.sleep(STATUS_EVERY)
                connected = sum(s.connected for s in self.shards)
                say(
                    f"{connected}/{len(specs)} connected; chatting at {o.rate:g} msg/s "
                    f"for {o.minutes:g} min, a fault every {o.fault_every:g} s"
                )
                load.start_soon(self._sample, instances)
                started = trio.current_time()
                await self._tell("chat")
                async with trio.open_nursery() as chat:
                    chat.start_soon(self._faults, plant, started, load)
                    await trio.sleep(o.minutes * 60)
                    chat.cancel_scope.cancel()
                await self._tell("stop")
                sending = trio.current_time() - started
                say("sending stopped; waiting for the last acks and deliveries")
                await self._tell("settle")
                for shard in self.shards:
                    while shard.settled is None:
                        await shard.changed.wait()
                # The clients end first: one still retrying an intent after the query would count
                # as acknowledged (or delivered) and not stored.
                await self._tell("quit")
                with trio.move_on_after(60):
                    for shard in self.shards:
                        await shard.ended.wait()
                rows = await self.query(
                    "SELECT session_id::text, seq, id::text, client_msg_id FROM chat_messages"
                )
                outbox = await self.query(
                    "SELECT id, session_id::text, seq, event, destination, processed, dead, "
                    "retry_count, created_at::text, sent_at::text FROM chat_message_outbox "
                    "ORDER BY id"
                )
                (o.workdir / "outbox.tsv").write_text(
                    "".join("\t".join(map(str, r)) + "\n" for r in outbox or [])
                )
                load.cancel_scope.cancel()
        results = [shard.result() for shard in self.shards]
        stats = Stats()
        for r in results:
            stats.merge(r.stats)
        return Outcome(
            o,
            plant.redis is not None,
            sorted((c for r in results for c in r.clients), key=lambda c: c.index),
            stats,
            self.faults,
            self.samples,
            self.backlog,
            rows or [],
            instances,
            [],
            started,
            sending,
            [r.cpu for r in results],
            [r.loop_lag for r in results],
            sum(r.unsettled for r in results),
        )

    def _shards(self, clients: list[ClientSpec]) -> list[ShardProcess]:
        """The clients in `generators` shares of whole pairs, each with its share of the
        rate (pairs go round-robin, so each share mixes instances and transports)."""
        o = self.o
        n = max(1, min(o.generators, len(clients) // 2))
        shares: list[list[ClientSpec]] = [[] for _ in range(n)]
        for pair in range(len(clients) // 2):
            shares[pair % n] += clients[2 * pair : 2 * pair + 2]
        return [
            ShardProcess(
                ShardSpec(k, o, share, o.rate * len(share) / len(clients), self.db_url),
                o.workdir,
            )
            for k, share in enumerate(shares)
        ]

    async def _tell(self, word: str) -> None:
        for shard in self.shards:
            await shard.command(word)

    def _kind(self, i: int) -> str:
        """Both users of every (1/sockjs_share)-th pair on SockJS, one streaming and one
        polling, so each instance gets its share (the two users of a pair are on different
        instances). Chosen per client, every SockJS client was on the first instance, whose
        HTTP requests then took three times the other's CPU."""
        if self.o.sockjs_share <= 0:
            return WS
        period = max(1, round(1 / self.o.sockjs_share))
        pair = i // 2
        if pair % period:
            return WS
        return XHR_STREAMING if (pair // period + i) % 2 == 0 else XHR_POLLING

    async def _sessions(
        self, http: httpx.AsyncClient, inst: Instance, tokens: list[str], emails: list[str]
    ) -> list[str]:
        out: list[str] = [""] * (len(tokens) // 2)
        limiter = trio.CapacityLimiter(16)

        async def one(k: int) -> None:
            async with limiter:
                answer = await http.post(
                    f"{inst.base}/api/chat/init",
                    json={"toEmail": emails[2 * k + 1], "intent": "soak"},
                    headers={"Authorization": f"Bearer {tokens[2 * k]}"},
                )
                answer.raise_for_status()
                out[k] = answer.json()["sessionId"]

        async with trio.open_nursery() as nursery:
            for k in range(len(out)):
                nursery.start_soon(one, k)
        return out

    # -- faults ---------------------------------------------------------------------------------

    async def _faults(self, plant: F.Plant, started: float, recovery: trio.Nursery) -> None:
        """Fault after fault in turn; each one's recovery is measured in `recovery` (which
        outlives the sending window, so the last one is measured too)."""
        o = self.o
        names = F.schedule(plant)
        end = started + o.minutes * 60
        for n in range(10_000):
            at = max(started + (n + 1) * o.fault_every, trio.current_time())
            if at + max(o.hold, o.pause) + TAIL > end:
                return  # no room to see it recover while the load still runs
            await trio.sleep_until(at)
            name = names[n % len(names)]
            say(f"fault {n + 1}: {name}")
            fault = await F.inflict(name, n // len(names), plant)
            self.faults.append(fault)
            say(f"  {fault.target} back after {fault.restored - fault.started:.1f} s")
            recovery.start_soon(
                functools.partial(
                    F.measure_recovery,
                    fault,
                    instances=len(plant.instances),
                    acked_since=self._acked_since,
                    backlog_before=self.pending_before,
                    limit=max(o.fault_every, 60.0),
                )
            )

    def _acked_since(self, instance: int, since: float) -> bool:
        return any(s.last_ack.get(instance, 0.0) > since for s in self.shards)

    # -- samplers -----------------------------------------------------------------------------

    async def _sample(self, instances: list[Instance]) -> None:
        while True:
            now = trio.current_time()
            for i, inst in enumerate(instances):
                try:
                    pid = inst.pid
                    fds, rss = len(os.listdir(f"/proc/{pid}/fd")), rss_bytes(pid)
                    if rss and fds:  # not a process on its way out
                        self.samples.append(
                            Sample(now, i, pid, rss, fds, cpu_seconds(pid), await self._gauge(inst))
                        )
                except (OSError, AssertionError):
                    pass  # between a kill and its restart
            pending = await self.query(
                "SELECT count(*) FROM chat_message_outbox WHERE NOT processed AND NOT dead"
            )
            if pending is not None:
                self.backlog.append((now, int(pending[0][0])))
            await trio.sleep(SAMPLE_EVERY)

    async def _gauge(self, inst: Instance) -> int | None:
        """The instance's own delivery backlog from /metrics (None when it does not answer
        within GAUGE_WAIT: a loaded instance answers HTTP in seconds)."""
        try:
            with trio.move_on_after(GAUGE_WAIT):
                answer = await self.http.get(f"{inst.base}/metrics")
                for line in answer.text.splitlines():
                    if line.startswith("chatd_delivery_backlog "):
                        return int(float(line.split()[1]))
        except (httpx.HTTPError, OSError, ValueError):
            pass
        return None
