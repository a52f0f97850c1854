"""The Redis tier's client: prefixed keys, metrics, and its up/down state against a private
redis-server that the tests kill, pause and start again (never the shared one)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import httpx
import pytest
import trio

from chatd.config import Config, RedisConfig, ServerConfig
from chatd.observability.metrics import Metrics
from chatd.redis_tier import RedisTier, RedisUnavailable
from chatd.supervisor import serve
from tests.conftest import PrivateRedis

from .realtime.conftest import CAROL, chat_config, key_pair, start_chat

__all__ = ["key_pair"]  # a fixture, used by name

pytestmark = pytest.mark.timeout(60)


async def _started(nursery: trio.Nursery, tier: RedisTier) -> str:
    summary: str = await nursery.start(tier.run)
    return summary


async def test_calls_use_the_prefix_and_are_counted(
    nursery: trio.Nursery, redis_url: str, redis_prefix: str
) -> None:
    tier = RedisTier(redis_url, key_prefix=redis_prefix)
    latencies: list[float] = []
    tier.observe_latency = latencies.append
    assert await _started(nursery, tier) == "redis=up"
    key = tier.key("probe", "a@example.com")
    assert key == f"{redis_prefix}probe:a@example.com"
    await tier.call(lambda r: r.set(key, b"1", px=10_000))
    assert await tier.call(lambda r: r.get(key)) == b"1"
    assert (tier.calls, tier.errors, len(latencies)) == (2, 0, 2)
    metrics = Metrics()
    metrics.attach_redis(tier)
    text = metrics.render().decode()
    assert "chatd_redis_up 1.0" in text
    assert "chatd_redis_calls_total 2.0" in text
    assert "chatd_redis_errors_total 0.0" in text


@pytest.mark.faults
async def test_a_dead_redis_fails_fast_then_comes_back(
    nursery: trio.Nursery, private_redis: PrivateRedis
) -> None:
    tier = RedisTier(private_redis.url, timeout=0.2, retry_initial=0.05, retry_max=0.2)
    await _started(nursery, tier)
    await tier.call(lambda r: r.set(tier.key("k"), b"v"))
    private_redis.kill()
    started = time.perf_counter()
    with pytest.raises(RedisUnavailable):
        await tier.call(lambda r: r.get(tier.key("k")))
    assert time.perf_counter() - started < 1.0  # bounded by the timeout, not the OS
    assert not tier.up
    assert tier.errors == 1
    # While down, calls cost nothing: no network, no thread.
    started = time.perf_counter()
    for _ in range(100):
        with pytest.raises(RedisUnavailable):
            await tier.call(lambda r: r.get(tier.key("k")))
    assert time.perf_counter() - started < 0.05
    assert tier.errors == 1
    with pytest.raises(RedisUnavailable):
        await tier.check()
    private_redis.start()  # same port, empty
    with trio.fail_after(10):
        await tier.wait_up()
    assert await tier.call(lambda r: r.get(tier.key("k"))) is None


@pytest.mark.faults
async def test_a_paused_redis_is_bounded_by_the_timeout(
    nursery: trio.Nursery, private_redis: PrivateRedis
) -> None:
    tier = RedisTier(private_redis.url, timeout=0.2, retry_initial=0.05, retry_max=0.1)
    await _started(nursery, tier)
    private_redis.pause(True)
    started = time.perf_counter()
    with pytest.raises(RedisUnavailable):
        await tier.call(lambda r: r.ping())
    assert time.perf_counter() - started < 1.0
    assert not tier.up
    private_redis.pause(False)
    with trio.fail_after(10):
        await tier.wait_up()


async def test_a_redis_down_at_start_does_not_stop_the_start(nursery: trio.Nursery) -> None:
    from tests.conftest import free_port

    tier = RedisTier(f"redis://127.0.0.1:{free_port()}/0", timeout=0.1, retry_initial=0.05)
    assert await _started(nursery, tier) == "redis=down"
    with pytest.raises(RedisUnavailable):
        await tier.call(lambda r: r.ping())


@pytest.mark.faults
async def test_server_stays_ready_with_redis_degraded(
    nursery: trio.Nursery, tmp_path: Path, private_redis: PrivateRedis
) -> None:
    config = Config(
        server=ServerConfig(bind="127.0.0.1:0", data_dir=tmp_path, shutdown_grace=2),
        redis=RedisConfig(
            url=private_redis.url, timeout=0.2, retry_initial_seconds=0.05, retry_max_seconds=0.2
        ),
    )
    summaries = await nursery.start(
        lambda task_status: serve(config, handle_signals=False, task_status=task_status)
    )
    assert "redis=up" in summaries
    (base,) = [s.removeprefix("http=") for s in summaries if s.startswith("http=")]
    async with httpx.AsyncClient(base_url=base) as client:
        ready = await client.get("/health/ready")
        assert (ready.status_code, ready.json()["checks"]["redis"]) == (200, "up")
        private_redis.kill()  # the probe's PING notices
        ready = await client.get("/health/ready")
        assert ready.status_code == 200
        assert ready.json()["checks"]["redis"].startswith("degraded")
        assert "chatd_redis_up 0.0" in (await client.get("/metrics")).text
    nursery.cancel_scope.cancel()


@pytest.mark.faults
async def test_sends_and_inits_keep_working_when_redis_dies(
    nursery: trio.Nursery,
    tmp_path: Path,
    private_redis: PrivateRedis,
    key_pair: tuple[bytes, Path],
) -> None:
    config = chat_config(tmp_path, f"sqlite:///{tmp_path / 'chat.sqlite3'}", key_pair[1])
    config = dataclasses.replace(
        config,
        redis=RedisConfig(
            url=private_redis.url, timeout=0.2, retry_initial_seconds=0.05, retry_max_seconds=0.2
        ),
    )
    chat = await start_chat(nursery, config, key_pair[0])
    sid = await chat.init()
    await chat.send(sid, "before", "m1")
    private_redis.kill()
    # Nothing fails: the send path's limiter and the profiles fall back to this instance.
    for i in range(5):
        await chat.send(sid, f"during {i}", f"d{i}")
    other = await chat.init(peer=CAROL)
    await chat.send(other, "to carol", "c1")
    ready = await chat.client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json()["checks"]["redis"].startswith("degraded")
    private_redis.start()
    with trio.fail_after(10):  # the reconnect pings notice it
        while True:
            if (await chat.client.get("/health/ready")).json()["checks"]["redis"] == "up":
                break
            await trio.sleep(0.05)
    await chat.send(sid, "after", "m2")
    assert len(await chat.history(sid)) == 7
    await chat.client.aclose()
    chat.scope.cancel()


async def test_concurrent_script_calls_share_pipelines(
    nursery: trio.Nursery, redis_url: str, redis_prefix: str
) -> None:
    tier = RedisTier(redis_url, key_prefix=redis_prefix)
    incr = tier.scripts.register("return redis.call('INCRBY', KEYS[1], ARGV[1])")
    await _started(nursery, tier)
    results: list[int] = []

    async def one(i: int) -> None:
        results.append(await tier.scripts.run_script(incr, [tier.key("n", str(i % 5))], [1]))

    async with trio.open_nursery() as calls:
        for i in range(100):
            calls.start_soon(one, i)
    assert sorted(results) == sorted(list(range(1, 21)) * 5)
    assert tier.scripts.batched_calls == 100
    assert tier.scripts.batches < 50  # one thread hop carried many calls
    assert tier.calls == tier.scripts.batches


@pytest.mark.faults
async def test_scripts_are_loaded_again_when_redis_forgot_them(
    nursery: trio.Nursery, private_redis: PrivateRedis
) -> None:
    tier = RedisTier(private_redis.url, timeout=0.5)
    echo = tier.scripts.register("return ARGV[1]")
    await _started(nursery, tier)
    assert await tier.scripts.run_script(echo, [], ["a"]) == b"a"
    await tier.call(lambda r: r.script_flush())
    assert await tier.scripts.run_script(echo, [], ["b"]) == b"b"
    broken = tier.scripts.register("return redis.call('NOSUCHCOMMAND')")
    await tier.call(lambda r: r.script_load(broken.source))
    with pytest.raises(RedisUnavailable, match="script failed"):  # a bug, not an outage
        await tier.scripts.run_script(broken, [], [])
    assert tier.up
