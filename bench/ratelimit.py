"""CPU cost of the send path's rate-limit check, local and shared in Redis (issue 16).

``python -m bench.ratelimit [--redis URL] [--checks N]``: runs the check alone (no HTTP, no
store) in this process and reports the process CPU (trio thread plus the redis-py worker
threads: what chatd would pay) per check in microseconds, the wall time per check, and
Redis's own CPU per check (``INFO cpu``; another process). Scenarios:

- ``local``: the per-instance `SendRateLimiter` (no Redis tier);
- ``lease, 1 user``: one user sending back to back (most sends spend a leased token);
- ``N users, serial``: every send a new user, one at a time (every send a round trip,
  nothing to batch: the worst case, as at low load);
- ``N users, 64 concurrent``: every send a round trip, 64 in flight (batched hops, as
  under load).

Each with ``rate_lease_block`` 10 (the default) and 1 (one exact check per send). Keys go
under a fresh prefix, deleted at the end.
"""

from __future__ import annotations

import argparse
import time
import uuid
from collections.abc import Awaitable, Callable

import redis
import trio

from chatd.domain.rules import SendRateLimiter
from chatd.redis_tier import RedisTier, SharedRateLimiter

Check = Callable[[str, str, float], Awaitable[None]]


def _redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


async def _measure(
    check: Check, users: list[str], checks: int, concurrency: int, probe: redis.Redis
) -> tuple[float, float, float]:
    """(process CPU µs, wall µs, Redis CPU µs) per check."""
    now = time.time()
    queue = list(range(checks))
    cpu0, wall0, redis0 = time.process_time(), time.perf_counter(), _redis_cpu(probe)

    async def worker() -> None:
        while queue:
            i = queue.pop()
            await check(users[i % len(users)], f"message {i}", now + i * 1e-6)

    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return cpu / checks * 1e6, wall / checks * 1e6, (_redis_cpu(probe) - redis0) / checks * 1e6


async def run(url: str, checks: int) -> list[tuple[str, float, float, float]]:
    prefix = f"bench_rl_{uuid.uuid4().hex[:8]}:"
    probe = redis.Redis.from_url(url)
    rows: list[tuple[str, float, float, float]] = []
    big = {
        "send_burst": 1_000_000,
        "sends_per_second": 1_000_000.0,
        "identical_content": 1_000_000,
        "max_users": 1_000_000,
    }
    try:
        local = SendRateLimiter(**big)  # type: ignore[arg-type]

        async def local_check(user: str, text: str, now: float) -> None:
            local.check(user, text, now)

        rows.append(("local (no Redis)", *await _measure(local_check, ["u"], checks, 1, probe)))
        async with trio.open_nursery() as nursery:
            for block in (10, 1):
                tier = RedisTier(url, key_prefix=f"{prefix}{block}:", pool_size=8)
                await nursery.start(tier.run)
                shared = SharedRateLimiter(
                    tier,
                    SendRateLimiter(**big),  # type: ignore[arg-type]
                    lease_block=block,
                )
                many = [f"user{i}@example.com" for i in range(checks)]
                for name, users, concurrency in (
                    ("1 user, serial", ["one@example.com"], 1),
                    (f"{checks} users, serial", many, 1),
                    (f"{checks} users, 64 concurrent", many, 64),
                ):
                    label = f"shared, lease {block}: {name}"
                    rows.append(
                        (label, *await _measure(shared.check, users, checks, concurrency, probe))
                    )
            nursery.cancel_scope.cancel()
    finally:
        keys = list(probe.scan_iter(match=f"{prefix}*", count=1000))
        for i in range(0, len(keys), 1000):
            probe.delete(*keys[i : i + 1000])
        probe.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ratelimit", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--checks", type=int, default=5000)
    args = parser.parse_args(argv)
    rows = trio.run(run, args.redis, args.checks)
    print("| scenario | chatd CPU µs/check | wall µs/check | Redis CPU µs/check |")
    print("|---|---|---|---|")
    for label, cpu, wall, rcpu in rows:
        print(f"| {label} | {cpu:.1f} | {wall:.1f} | {rcpu:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
