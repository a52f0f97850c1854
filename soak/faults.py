"""The faults of a soak run, one every `every` seconds in turn, and how long the system took
to recover from each: until every instance acknowledged a send again and the outbox rows
written before the fault ended were delivered."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import trio

from soak.cluster import Instance
from soak.services import PrivatePostgres, PrivateRabbit, PrivateRedis
from tests.proxy import ProxyProcess

KILL, RABBIT, REDIS, POSTGRES, CUT, PAUSE = (
    "kill -9 + restart",
    "restart RabbitMQ",
    "stop Redis",
    "restart PostgreSQL",
    "cut off RabbitMQ",
    "SIGSTOP",
)
ORDER = (KILL, RABBIT, REDIS, POSTGRES, CUT, PAUSE)


@dataclass
class Fault:
    """One fault as it happened."""

    name: str
    target: str
    started: float  # monotonic
    started_unix: float
    restored: float = 0.0  # monotonic: the service is back / the hold ended
    restored_unix: float = 0.0
    restored_at: datetime | None = None
    sends_ok: float | None = None  # seconds from restore until every instance acked a send
    drained: float | None = None  # seconds from restore until older outbox rows were sent
    errors_explained: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def window_end_unix(self) -> float:
        """The end of the time this fault explains ERROR lines in."""
        recovered = max(self.sends_ok or 30.0, self.drained or 30.0)
        return self.restored_unix + recovered + 10.0


@dataclass
class Plant:
    """What the faults act on."""

    instances: list[Instance]
    postgres: PrivatePostgres
    rabbit: PrivateRabbit
    redis: PrivateRedis | None
    proxy: ProxyProcess
    cut_instance: int  # the instance that reaches RabbitMQ through the proxy
    hold: float  # how long Redis stays down and the proxy stays cut
    pause: float  # how long SIGSTOP lasts


def schedule(plant: Plant) -> list[str]:
    """The fault names that apply to this plant, in turn."""
    return [f for f in ORDER if f != REDIS or plant.redis is not None]


async def inflict(name: str, n: int, plant: Plant) -> Fault:
    """Cause fault `name` (the n-th fault of the run, which picks the instance) and end it;
    returns once the broken part is back."""
    inst = plant.instances[n % len(plant.instances)]
    target = {
        RABBIT: "rabbitmq",
        REDIS: "redis",
        POSTGRES: "postgresql",
        CUT: plant.instances[plant.cut_instance].name,
    }.get(name, inst.name)
    fault = Fault(name, target, trio.current_time(), time.time())
    run = trio.to_thread.run_sync
    if name == KILL:
        inst.kill()
        await run(inst.start)
    elif name == RABBIT:
        await run(plant.rabbit.stop)
        await run(plant.rabbit.start)
    elif name == REDIS:
        assert plant.redis is not None
        await run(plant.redis.stop)
        await trio.sleep(plant.hold)
        await run(plant.redis.start)
    elif name == POSTGRES:
        await run(plant.postgres.stop)
        await run(plant.postgres.start)
    elif name == CUT:
        plant.proxy.switch(False)
        await trio.sleep(plant.hold)
        plant.proxy.switch(True)
    elif name == PAUSE:
        inst.pause()
        await trio.sleep(plant.pause)
        inst.resume()
    fault.restored, fault.restored_unix = trio.current_time(), time.time()
    fault.restored_at = datetime.now(UTC)
    return fault


async def measure_recovery(
    fault: Fault,
    *,
    instances: int,
    acked_since: Callable[[int, float], bool],
    backlog_before: Callable[[datetime], Awaitable[int | None]],
    limit: float,
) -> None:
    """Fill in `fault.sends_ok` and `fault.drained` (None = not within `limit` seconds)."""
    assert fault.restored_at is not None
    with trio.move_on_after(limit):
        while fault.sends_ok is None or fault.drained is None:
            now = trio.current_time()
            if fault.sends_ok is None and all(
                acked_since(i, fault.restored) for i in range(instances)
            ):
                fault.sends_ok = round(now - fault.restored, 1)
            if fault.drained is None and await backlog_before(fault.restored_at) == 0:
                fault.drained = round(now - fault.restored, 1)
            await trio.sleep(0.5)
