"""Rate limits across instances: two `SharedRateLimiter`s (two instances: each its own local
limiter and Redis tier) over one real Redis, then a private Redis killed and paused mid-test,
where each instance falls back to its local limiter and nothing fails."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from chatd.config import LimitsConfig, RedisConfig
from chatd.domain.errors import RateLimited
from chatd.domain.rules import SendRateLimiter
from chatd.redis_tier import RedisTier, SharedRateLimiter
from tests.conftest import PrivateRedis

from .realtime.conftest import ALICE, CAROL, Chat, chat_config, key_pair, start_chat

__all__ = ["key_pair"]  # a fixture, used by name

pytestmark = pytest.mark.timeout(60)

USER = "spammer@example.com"
Instance = Callable[..., SharedRateLimiter]


@pytest.fixture
def instance(nursery: trio.Nursery) -> Instance:
    """What one chatd instance has: a local limiter, a Redis tier, the shared limiter."""

    def build(
        url: str, prefix: str = "chatd:", *, lease_block: int = 1, **limits: float
    ) -> SharedRateLimiter:
        tier = RedisTier(url, key_prefix=prefix, timeout=0.2, retry_initial=0.05, retry_max=0.2)
        nursery.start_soon(tier.run)
        options = {
            "send_burst": 10,
            "sends_per_second": 0.001,
            "identical_content": 100,
            "identical_window_seconds": 60.0,
        } | limits
        local = SendRateLimiter(**options)  # type: ignore[arg-type]
        return SharedRateLimiter(tier, local, lease_block=lease_block)

    return build


async def _up(*limiters: SharedRateLimiter) -> None:
    with trio.fail_after(5):
        for limiter in limiters:
            await limiter.tier.wait_up()


async def _sends(
    limiters: list[SharedRateLimiter],
    count: int,
    now: float,
    text: Callable[[int], str] = lambda i: f"message {i}",
) -> list[int]:
    """Send `count` times round-robin over `limiters`; the indexes of the accepted sends."""
    accepted = []
    for i in range(count):
        try:
            await limiters[i % len(limiters)].check(USER, text(i), now)
        except RateLimited:
            continue
        accepted.append(i)
    return accepted


async def test_one_user_is_limited_across_two_instances(
    instance: Instance, redis_url: str, redis_prefix: str
) -> None:
    a, b = instance(redis_url, redis_prefix), instance(redis_url, redis_prefix)
    await _up(a, b)
    now = time.time()
    # Each instance alone would accept its whole burst of 10: 20 in all.
    assert len(await _sends([a, b], 30, now)) == 10
    with pytest.raises(RateLimited, match="too many messages") as refused:
        await b.check(USER, "one more", now)
    assert refused.value.retry_after > 0
    assert (a.fallbacks, b.fallbacks) == (0, 0)
    # A refused send is refunded locally: the local limiter does not drift from Redis.
    assert a.local._users.get(USER).tokens == pytest.approx(5, abs=0.1)  # type: ignore[union-attr]


async def test_a_batch_is_limited_across_instances_and_refused_whole(
    instance: Instance, redis_url: str, redis_prefix: str
) -> None:
    a, b = instance(redis_url, redis_prefix), instance(redis_url, redis_prefix)
    await _up(a, b)
    now = time.time()
    await a.check_many(USER, [f"a{i}" for i in range(6)], now)  # 6 of the shared 10
    # b alone has 10 tokens, but the user has 4 left: a batch of 5 is refused whole...
    with pytest.raises(RateLimited, match="too many messages"):
        await b.check_many(USER, [f"b{i}" for i in range(5)], now)
    assert b.local._users.get(USER).tokens == pytest.approx(10, abs=0.1)  # type: ignore[union-attr]
    # ...though the tokens its first texts took in Redis stay spent (never one too many)
    with pytest.raises(RateLimited, match="too many messages"):
        await a.check_many(USER, ["c0"], now)


async def test_leased_tokens_never_exceed_the_limit_and_save_round_trips(
    instance: Instance, redis_url: str, redis_prefix: str
) -> None:
    a = instance(redis_url, redis_prefix, lease_block=4)
    b = instance(redis_url, redis_prefix, lease_block=4)
    await _up(a, b)
    now = time.time()
    accepted = await _sends([a, b, b, a, a, a], 60, now)
    # With no refill (one `now`), leases never add up to more than the burst; tokens leased
    # by one instance and unused there are missing on the other (at most a lease less).
    assert 10 - 3 <= len(accepted) <= 10
    assert a.leased + b.leased >= 4  # sends decided with no round trip
    # Once Redis said the bucket is empty, the refusals are local too: no round trip each.
    assert a.checked + b.checked < len(accepted)


async def test_identical_texts_are_counted_across_instances(
    instance: Instance, redis_url: str, redis_prefix: str
) -> None:
    options = {"send_burst": 100, "identical_content": 3}
    a = instance(redis_url, redis_prefix, **options)
    b = instance(redis_url, redis_prefix, **options)
    await _up(a, b)
    now = time.time()
    assert len(await _sends([a, b], 10, now, text=lambda i: "buy now")) == 3
    with pytest.raises(RateLimited, match="the same message was sent 3 times in 60 s"):
        await a.check(USER, "buy now", now + 1)
    await a.check(USER, "something else", now + 1)  # other texts pass
    # With leases, a repeat still makes a round trip: at most one uncounted copy per instance.
    c = instance(redis_url, redis_prefix + "x", lease_block=10, **options)
    d = instance(redis_url, redis_prefix + "x", lease_block=10, **options)
    await _up(c, d)
    await _sends([c, d], 4, now, text=lambda i: f"warm up {i}")  # both hold a lease
    assert len(await _sends([c, d], 12, now, text=lambda i: "buy now")) <= 3 + 1


@pytest.mark.faults
async def test_a_dead_or_slow_redis_falls_back_to_the_local_limiter(
    instance: Instance, private_redis: PrivateRedis
) -> None:
    a, b = instance(private_redis.url), instance(private_redis.url)
    await _up(a, b)
    now = time.time()
    assert len(await _sends([a, b], 8, now)) == 8
    private_redis.kill()
    started = time.perf_counter()
    # Redis gone: each instance limits by what it knows (6 more on a, 6 more on b), and the
    # only refusals are its own.
    assert len(await _sends([a, b], 30, now + 0.001)) == 12
    assert time.perf_counter() - started < 1.5
    assert a.fallbacks + b.fallbacks >= 10
    private_redis.start()  # an empty Redis: a fresh bucket (and 4 local tokens per 4000 s)
    await _up(a, b)
    assert len(await _sends([a, b], 4, now + 4000, text=lambda i: f"back {i}")) == 4
    private_redis.pause(True)  # a Redis that stops answering costs one timeout
    started = time.perf_counter()
    assert len(await _sends([a, b], 4, now + 8000, text=lambda i: f"paused {i}")) == 4
    assert time.perf_counter() - started < 2.0


async def _redis_chat(
    nursery: trio.Nursery,
    workdir: Path,
    database_url: str,
    redis_url: str,
    redis_prefix: str,
    key_pair: tuple[bytes, Path],
    lease_block: int,
) -> Chat:
    """A whole server with the Redis tier and a burst of 5 sends (no refill to speak of)."""
    config = dataclasses.replace(
        chat_config(workdir, database_url, key_pair[1]),
        limits=LimitsConfig(send_burst=5, sends_per_second=0.001),
        redis=RedisConfig(url=redis_url, key_prefix=redis_prefix, rate_lease_block=lease_block),
    )
    return await start_chat(nursery, config, key_pair[0])


async def test_two_servers_limit_one_user_over_rest(
    nursery: trio.Nursery,
    tmp_path: Path,
    database_url: str,
    redis_url: str,
    redis_prefix: str,
    key_pair: tuple[bytes, Path],
) -> None:
    """Two whole instances on one database and one Redis: a user's sends, round-robin over
    both, are limited once (429 with Retry-After), as one instance would limit them."""
    chats = [
        await _redis_chat(
            nursery, tmp_path / name, database_url, redis_url, redis_prefix, key_pair, 2
        )
        for name in ("a", "b")
    ]
    a = chats[0]
    sid = await a.init()
    statuses = []
    for i in range(12):
        chat = chats[i % 2]
        answer = await chat.client.post(
            "/api/chat/message",
            headers=chat.auth(ALICE),
            json={"sessionId": sid, "content": f"hello {i}", "clientMessageId": f"m{i}"},
        )
        statuses.append(answer.status_code)
        if answer.status_code == 429:
            assert float(answer.headers["Retry-After"]) > 0
    # Each alone would take 5 (10 in all); leases may leave one unused on the other side.
    assert 4 <= statuses.count(201) <= 5
    assert statuses.count(429) == 12 - statuses.count(201)
    assert "chatd_rate_limit_shared_checks_total" in (await a.client.get("/metrics")).text
    for chat in chats:
        await chat.client.aclose()
        chat.scope.cancel()


async def test_a_batch_stored_none_of_gives_its_tokens_back_to_the_redis_lease(
    nursery: trio.Nursery,
    tmp_path: Path,
    database_url: str,
    redis_url: str,
    redis_prefix: str,
    key_pair: tuple[bytes, Path],
) -> None:
    """A batch refused at the store (a clientMessageId of another session) stored nothing, so
    it costs nothing: its tokens go back where they were charged, the leased block included
    (they once went back to the local limiter only, and the lease stayed spent)."""
    chat = await _redis_chat(nursery, tmp_path, database_url, redis_url, redis_prefix, key_pair, 5)
    sid, other = await chat.init(), await chat.init(peer=CAROL)

    async def post(path: str, body: dict[str, object]) -> int:
        answer = await chat.client.post(path, headers=chat.auth(ALICE), json=body)
        return answer.status_code

    assert (
        await post(
            "/api/chat/message", {"sessionId": other, "content": "x", "clientMessageId": "taken"}
        )
        == 201
    )
    batch = [
        {"content": f"b{i}", "clientMessageId": c} for i, c in enumerate(("n1", "taken", "n2"))
    ]
    assert await post("/api/chat/messages", {"sessionId": sid, "messages": batch}) == 400
    singles = [
        await post(
            "/api/chat/message", {"sessionId": sid, "content": f"s{i}", "clientMessageId": f"s{i}"}
        )
        for i in range(5)
    ]
    assert singles == [201, 201, 201, 201, 429]  # 4 left of the burst of 5, as if no batch
    await chat.client.aclose()
    chat.scope.cancel()
