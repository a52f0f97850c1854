"""`RedisPresence` against a real Redis (the shared one under a test prefix, or a private one
the test kills), two "instances" in one process, and an injected wall clock: TTLs pass without
waiting."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
import trio

from chatd.presence.redis_state import RedisPresence
from chatd.redis_tier import RedisTier
from tests.conftest import PrivateRedis

pytestmark = pytest.mark.timeout(60)

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
X, Y = "x@example.com", "y@example.com"


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


async def tier(nursery: trio.Nursery, url: str, prefix: str = "chatd:") -> RedisTier:
    started = RedisTier(url, key_prefix=prefix, timeout=0.5, retry_initial=0.05, retry_max=0.1)
    await nursery.start(started.run)
    return started


def pair(shared: RedisTier, clock: Callable[[], datetime]) -> tuple[RedisPresence, ...]:
    return tuple(RedisPresence(shared, name, ttl=30, clock=clock) for name in ("a", "b"))


async def test_online_while_any_instance_holds_the_user(
    nursery: trio.Nursery, redis_url: str, redis_prefix: str
) -> None:
    clock = Clock()
    a, b = pair(await tier(nursery, redis_url, redis_prefix), clock)
    assert await a.arrive(X) is True
    assert await b.arrive(X) is False  # already online (on a): no second announcement
    assert (await b.lookup([X, Y]))[X].online
    assert not (await b.lookup([X, Y]))[Y].online
    clock.advance(1)
    assert await a.leave(X, clock()) is False  # still on b
    assert (await a.lookup([X]))[X].online
    assert await b.leave(X, clock()) is True
    found = (await a.lookup([X]))[X]
    assert (found.online, found.last_seen) == (False, T0 + timedelta(seconds=1))


async def test_a_dead_instances_users_go_offline_within_the_ttl(
    nursery: trio.Nursery, redis_url: str, redis_prefix: str
) -> None:
    clock = Clock()
    a, b = pair(await tier(nursery, redis_url, redis_prefix), clock)
    await a.arrive(X)
    await a.arrive(Y)
    await b.arrive(Y)  # Y also on b: stays online when a dies
    clock.advance(2)
    await a.maintain({X, Y}, clock())  # a's last renewal: X's last seen
    await b.maintain({Y}, clock())
    clock.advance(19)  # a stops renewing (killed); b goes on
    assert await b.maintain({Y}, clock()) == []
    assert (await b.lookup([X]))[X].online
    clock.advance(1.5)  # 2/3 of the TTL since a's last renewal: lapsed
    assert not (await b.lookup([X]))[X].online  # past a's TTL: offline for every reader
    gone = await b.maintain({Y}, clock())
    assert [(p.email, p.online, p.last_seen) for p in gone] == [
        (X, False, T0 + timedelta(seconds=2))
    ]
    assert await b.maintain({Y}, clock()) == []  # announced once
    assert (await b.lookup([Y]))[Y].online


async def test_retire_lets_users_lapse_after_the_grace_period(
    nursery: trio.Nursery, redis_url: str, redis_prefix: str
) -> None:
    clock = Clock()
    a, b = pair(await tier(nursery, redis_url, redis_prefix), clock)
    await a.arrive(X)
    await a.arrive(Y)
    await a.retire(5)
    await b.arrive(Y)  # Y reconnected elsewhere within the grace period
    clock.advance(5.1)
    gone = await b.maintain({Y}, clock())
    assert [(p.email, p.last_seen) for p in gone] == [(X, T0)]  # seen when a stopped


async def test_maintain_rewrites_what_redis_lost_and_drops_who_left(
    nursery: trio.Nursery, redis_url: str, redis_prefix: str
) -> None:
    clock = Clock()
    shared = await tier(nursery, redis_url, redis_prefix)
    a, b = pair(shared, clock)
    await a.arrive(X)
    await a.arrive(Y)
    keys = await shared.call(lambda r: list(r.scan_iter(match=f"{redis_prefix}*")))
    await shared.call(lambda r: r.delete(*keys))  # as if Redis restarted empty
    assert not (await b.lookup([X]))[X].online
    gone = await a.maintain({X}, clock())  # Y left while Redis was away
    assert gone == []
    assert (await b.lookup([X]))[X].online


async def test_redis_down_falls_back_to_local_knowledge(
    nursery: trio.Nursery, private_redis: PrivateRedis
) -> None:
    clock = Clock()
    shared = await tier(nursery, private_redis.url)
    a, _ = pair(shared, clock)
    await a.arrive(X)
    private_redis.kill()
    assert await a.arrive(Y) is True  # never fails: local knowledge
    assert {e: p.online for e, p in (await a.lookup([X, Y, "z@example.com"])).items()} == {
        X: True,
        Y: True,
        "z@example.com": False,
    }
    assert await a.leave(Y, clock()) is True
    assert await a.maintain({X}, clock()) == []
    await a.retire(1)
    assert a.fallbacks >= 4
    private_redis.start()
    with trio.fail_after(10):
        await shared.wait_up()
    await a.maintain({X}, clock())  # writes X again into the fresh Redis
    assert (await a.lookup([X]))[X].online


async def test_a_renewal_alone_keeps_an_instances_users_online(
    nursery: trio.Nursery, redis_url: str, redis_prefix: str
) -> None:
    """`renew` keeps this instance's entries from lapsing without the resynchronization of
    `maintain`, which carries every user: under load an instance busy announcing 1 500
    arrivals missed its renewals, and the other instance declared all its users offline."""
    clock = Clock()
    a, b = pair(await tier(nursery, redis_url, redis_prefix), clock)
    await a.arrive(X)
    await a.maintain({X}, clock())
    for _ in range(3):  # a minute, far past the lapse (2/3 of the TTL), renewing only
        clock.advance(15)
        assert await a.renew(clock()) is True
        assert await b.maintain(set(), clock()) == []
    assert (await b.lookup([X]))[X].online
    clock.advance(20.5)  # a stops renewing (killed): its users lapse as before
    assert [p.email for p in await b.maintain(set(), clock())] == [X]
