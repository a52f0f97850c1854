"""One load-generator process of a soak run: a share of the clients (whole pairs), their
share of the offered rate, and the settle check for them.

One Python process drives at most one core, and a busy event loop wakes every client late: in
the 3 000-client form one generator ran at 94 % of a core, its loop lagged seconds, and the
clients' heart-beats timed out by the thousand. So the run splits its clients over several of
these (``--generators``); the machine's idle time on both cores goes to them.

The parent speaks to a shard over pipes, one line each way: it writes the commands ``chat``,
``stop``, ``settle`` and ``quit`` to stdin; the shard writes a JSON status line every
`STATUS_EVERY` seconds (clients connected, intents pending, each instance's last
acknowledgement) and ``{"settled": N}`` once the settle check is done. At ``quit`` it writes
its `ShardResult` (pickled) and ends. Every process runs on `SharedClock`, so a time read in
one is a time in all.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import random
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import trio

from bench.targets import raise_fd_limit, self_cpu
from soak.client import ACK_TIMEOUT, Client, ClientRecord, Intent, Stats

if TYPE_CHECKING:
    from soak.runner import Options

#: Not ``-m soak.shard``: as ``__main__`` its classes would pickle under that name.
ENTRY = "from soak.shard import main; main()"
STATUS_EVERY = 0.5
SETTLE = 90.0  # at most this long, after the last send, for every client to see everything
GENERATOR_NICE = -5
START_SPREAD = 0.002  # seconds between two clients' starts (no thundering herd)


class SharedClock(trio.abc.Clock):
    """trio's clock without its random offset: ``time.perf_counter`` is the system's
    monotonic clock on Linux, the same in every process, so the parent and the shards can
    compare the times they record (acknowledgements, ERROR frames, faults)."""

    def start_clock(self) -> None:
        pass

    def current_time(self) -> float:
        return time.perf_counter()

    def deadline_to_sleep_time(self, deadline: float) -> float:
        return deadline - time.perf_counter()


@dataclass
class ClientSpec:
    index: int
    email: str
    token: str
    session: str
    instance: int
    host: str
    port: int
    kind: str


@dataclass
class ShardSpec:
    number: int
    options: Options
    clients: list[ClientSpec]  # whole pairs: clients 2k and 2k + 1 together
    rate: float  # this shard's share of the offered messages per second
    db_url: str


@dataclass
class ShardResult:
    clients: list[ClientRecord]
    stats: Stats
    cpu: float  # CPU seconds over the sending window
    loop_lag: list[float] = field(default_factory=list)
    unsettled: int = 0


def _db(url: str, sql: str) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(url, autocommit=True, connect_timeout=3) as conn:
        return list(conn.execute(sql.encode()).fetchall())


class Shard:
    def __init__(self, spec: ShardSpec) -> None:
        self.spec = spec
        self.stats = Stats()
        o = spec.options
        self.clients = [
            Client(
                c.index,
                c.email,
                c.token,
                c.session,
                c.instance,
                c.host,
                c.port,
                c.kind,
                self.stats,
                heartbeat_ms=o.heartbeat_ms,
                client_heartbeat_ms=o.client_heartbeat_ms,
                receipt_every=o.receipt_every,
            )
            for c in spec.clients
        ]
        self.loop_lag: list[float] = []
        self.cpu = 0.0
        self.unsettled = len(self.clients)

    def status(self, **extra: object) -> None:
        line = {
            "connected": sum(c.connected for c in self.clients),
            "pending": sum(len(c.pending) for c in self.clients),
            "last_ack": self.stats.last_ack,
            **extra,
        }
        print(json.dumps(line), flush=True)

    async def main(self) -> ShardResult:
        random.seed(self.spec.options.seed * 1000 + self.spec.number)
        timeout = httpx.Timeout(60.0, connect=10.0)
        async with trio.open_nursery() as nursery:
            for c in self.clients:
                nursery.start_soon(c.run, timeout)
                await trio.sleep(START_SPREAD)
            nursery.start_soon(self._report)
            chat: trio.CancelScope | None = None
            cpu0 = 0.0
            commands = LineReader(trio.lowlevel.FdStream(sys.stdin.fileno()))
            while (word := await commands.line()) is not None:
                if word == "chat":
                    cpu0 = self_cpu()
                    nursery.start_soon(self._lag)
                    chat = trio.CancelScope()
                    nursery.start_soon(self._schedule, chat)
                elif word == "stop" and chat is not None:
                    chat.cancel()
                    self.cpu = self_cpu() - cpu0
                elif word == "settle":
                    self.unsettled = await self._settle()
                    self.status(settled=self.unsettled)
                elif word == "quit":
                    break
            nursery.cancel_scope.cancel()
        records = [c.record() for c in self.clients]
        return ShardResult(records, self.stats, self.cpu, self.loop_lag, self.unsettled)

    async def _report(self) -> None:
        while True:
            self.status()
            await trio.sleep(STATUS_EVERY)

    async def _schedule(self, scope: trio.CancelScope) -> None:
        """Offer this shard's rate over its pairs in turn, each from one side, through REST
        for `rest_share` of them."""
        o = self.spec.options
        pairs = len(self.clients) // 2
        order = list(range(pairs))
        random.shuffle(order)
        with scope:
            start, n = trio.current_time(), 0
            while True:
                n += 1
                at = start + n / self.spec.rate
                if at > trio.current_time():
                    await trio.sleep_until(at)
                pair = order[n % pairs]
                side = (n // pairs) % 2
                client = self.clients[2 * pair + side]
                via = "rest" if random.random() < o.rest_share else "stomp"
                cmid = f"{client.index}-{n}"
                if not client.offer(Intent(cmid, via, f"soak {cmid}")):
                    self.stats.skipped += 1

    async def _settle(self) -> int:
        """Wait (bounded) for the last intents to be acknowledged and every client to have
        seen every stored message of its session; the clients still missing some."""
        await self._wait_while(lambda c: bool(c.pending), SETTLE)
        # Intents still pending are never tried again, and the sends on their way end first:
        # a retry stored after the check below would count as stored and not delivered.
        for c in self.clients:
            c.stop_sending()
        await self._wait_while(lambda c: c.sending, ACK_TIMEOUT + 1)
        missing = len(self.clients)
        with trio.move_on_after(SETTLE):
            while True:
                try:
                    rows = await trio.to_thread.run_sync(
                        _db,
                        self.spec.db_url,
                        "SELECT session_id::text, max(seq) FROM chat_messages GROUP BY session_id",
                    )
                except Exception:  # PostgreSQL down: try again
                    rows = None
                if rows is not None:
                    top = {s: int(m) for s, m in rows}
                    missing = sum(
                        c.last_seq < top.get(c.session, 0) or len(c.seen) < top.get(c.session, 0)
                        for c in self.clients
                    )
                    if missing == 0:
                        return 0
                await trio.sleep(1)
        return missing

    async def _wait_while(self, busy: Callable[[Client], bool], limit: float) -> None:
        """Return once no client is `busy`, or after `limit` seconds."""
        with trio.move_on_after(limit):
            while any(busy(c) for c in self.clients):  # noqa: ASYNC110 (a poll over every client)
                await trio.sleep(0.5)

    async def _lag(self) -> None:
        """How late this event loop wakes up: a generator that cannot keep up shows here."""
        while True:
            t0 = trio.current_time()
            await trio.sleep(0.25)
            self.loop_lag.append(trio.current_time() - t0 - 0.25)


class LineReader:
    """Lines from a stream, without their ends; None once it is closed."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self.buf = b""

    async def line(self) -> str | None:
        while b"\n" not in self.buf:
            chunk = await self.stream.receive_some()
            if not chunk:
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode().strip()


class ShardProcess:
    """The parent's handle on one shard: starts it, keeps its last status, sends commands,
    reads its result."""

    def __init__(self, spec: ShardSpec, workdir: Path) -> None:
        self.spec = spec
        self.spec_path = workdir / f"shard{spec.number}.spec"
        self.result_path = workdir / f"shard{spec.number}.result"
        self.log_path = workdir / f"shard{spec.number}.log"
        self.connected = 0
        self.pending = len(spec.clients)
        self.last_ack: dict[int, float] = {}
        self.settled: int | None = None
        self.changed = trio.Event()
        self.ended = trio.Event()
        self.process: trio.Process | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the shard until it ends (after `quit`); its stderr goes to its log file."""
        self.spec_path.write_bytes(pickle.dumps(self.spec))
        with self.log_path.open("wb") as log:
            self.process = await trio.lowlevel.open_process(
                [sys.executable, "-c", ENTRY, str(self.spec_path), str(self.result_path)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,  # an autogroup of its own (see `_prioritise`)
            )
            task_status.started()
            try:
                assert self.process.stdout is not None
                lines = LineReader(self.process.stdout)
                while (line := await lines.line()) is not None:
                    self._status(json.loads(line))
                if await self.process.wait():
                    raise RuntimeError(
                        f"load generator {self.spec.number} failed (see {self.log_path})"
                    )
            finally:
                with trio.CancelScope(shield=True):
                    self.process.kill()
                    await self.process.wait()
                self.ended.set()

    def _status(self, line: dict[str, Any]) -> None:
        self.connected, self.pending = line["connected"], line["pending"]
        self.last_ack = {int(k): v for k, v in line["last_ack"].items()}
        if "settled" in line:
            self.settled = line["settled"]
        self.changed.set()
        self.changed = trio.Event()

    async def command(self, word: str) -> None:
        assert self.process is not None
        assert self.process.stdin is not None
        await self.process.stdin.send_all(word.encode() + b"\n")

    def result(self) -> ShardResult:
        result: ShardResult = pickle.loads(self.result_path.read_bytes())
        return result


def _prioritise() -> None:
    """Serve the generator first: it is the instrument, and on a machine whose cores chatd,
    the services and the generator share, a starved generator reads frames and beats late
    and the run measures it instead of chatd (which then gets what is left, as it would with
    cores of its own). Linux schedules by autogroup (one per session, `sched_autogroup`)
    before nice: each shard runs in a session of its own (`ShardProcess`) whose autogroup gets
    the higher priority. Sharing the parent's, the three shards got 20 % of a core each and
    their loops lagged seconds. Without the privilege this stays at the default priority."""
    with contextlib.suppress(OSError):
        os.nice(GENERATOR_NICE)
    with contextlib.suppress(OSError):
        Path("/proc/self/autogroup").write_text(f"{GENERATOR_NICE}\n")


def main() -> None:
    spec_path, result_path = Path(sys.argv[-2]), Path(sys.argv[-1])
    raise_fd_limit()
    _prioritise()
    spec: ShardSpec = pickle.loads(spec_path.read_bytes())
    result = trio.run(Shard(spec).main, clock=SharedClock())
    result_path.write_bytes(pickle.dumps(result))
