"""The shared second-level profile cache: two instances (two caches, two clients, two tiers)
against one counting fake profile service and a real Redis; then a private Redis killed and
paused mid-test, which only costs extra calls to the profile service."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric import rsa

from chatd.auth.keys import generate_private_key
from chatd.auth.service import ServiceTokens
from chatd.domain.errors import NotFound
from chatd.profiles import CachedProfiles, Profile, RemoteProfileProvider, SharedProfileCache
from chatd.profiles.shared import decode, encode
from chatd.redis_tier import RedisTier
from tests.conftest import PrivateRedis

from .fakes import FakeProfileService

pytestmark = pytest.mark.timeout(60)

ALICE, BOB, GHOST = "alice@example.com", "bob@example.com", "ghost@example.com"
Instance = Callable[..., CachedProfiles]


@pytest.fixture(scope="module")
def service_key() -> rsa.RSAPrivateKey:
    return generate_private_key()


@pytest.fixture
async def fake(nursery: trio.Nursery, service_key: rsa.RSAPrivateKey) -> FakeProfileService:
    service = FakeProfileService(service_key.public_key(), users={ALICE: "Alice A.", BOB: "Bob"})
    await nursery.start(service.run)
    return service


@pytest.fixture
async def instance(
    nursery: trio.Nursery, fake: FakeProfileService, service_key: rsa.RSAPrivateKey
) -> AsyncIterator[Instance]:
    """Builds what one chatd instance has: its own profile client, cache and Redis tier."""
    clients: list[RemoteProfileProvider] = []

    def build(url: str, prefix: str = "chatd:", **options: float) -> CachedProfiles:
        tier = RedisTier(url, key_prefix=prefix, timeout=0.2, retry_initial=0.05, retry_max=0.2)
        nursery.start_soon(tier.run)
        tokens = ServiceTokens(
            service_key, issuer="chat-service", audience="profile-service", kid="chat-service-1"
        )
        remote = RemoteProfileProvider(fake.url, tokens, timeout=1)
        clients.append(remote)
        return CachedProfiles(remote, shared=SharedProfileCache(tier), **options)  # type: ignore[arg-type]

    yield build
    for client in clients:
        await client.aclose()


async def _up(cache: CachedProfiles) -> None:
    assert cache.shared is not None
    with trio.fail_after(5):
        await cache.shared.tier.wait_up()


async def test_two_instances_call_the_profile_service_once(
    instance: Instance, fake: FakeProfileService, redis_url: str, redis_prefix: str
) -> None:
    a, b = instance(redis_url, redis_prefix), instance(redis_url, redis_prefix)
    await _up(a)
    await _up(b)
    assert await a.lookup(ALICE, "buy") == Profile(f"buy:{ALICE}", "Alice A.")
    assert await b.lookup(ALICE, "buy") == Profile(f"buy:{ALICE}", "Alice A.")
    for cache in (a, b):  # "no such user" is shared too
        with pytest.raises(NotFound, match="does not exist"):
            await cache.lookup(GHOST, "buy")
    assert len(fake.calls) == 2
    assert b.shared is not None
    assert (b.shared.hits, b.upstream.requests) == (2, 0)  # type: ignore[attr-defined]
    # A different intent is a different profile: another call.
    await b.lookup(ALICE, "sell")
    assert len(fake.calls) == 3


async def test_shared_entries_keep_the_ttls_and_the_copy_expires_with_them(
    instance: Instance, fake: FakeProfileService, redis_url: str, redis_prefix: str
) -> None:
    a = instance(redis_url, redis_prefix, ttl=60.0, not_found_ttl=0.4)
    b = instance(redis_url, redis_prefix, ttl=60.0, not_found_ttl=0.4)
    await _up(a)
    await _up(b)
    await a.lookup(ALICE, "buy")
    with pytest.raises(NotFound):
        await a.lookup(GHOST, "buy")
    assert a.shared is not None
    tier = a.shared.tier
    ttls = await tier.call(
        lambda r: (
            r.pttl(a.shared.key((ALICE, "buy"))),  # type: ignore[union-attr]
            r.pttl(a.shared.key((GHOST, "buy"))),
        )
    )  # type: ignore[union-attr]
    assert 59_000 < ttls[0] <= 60_000
    assert 0 < ttls[1] <= 400
    await trio.sleep(0.2)
    with pytest.raises(NotFound):  # b copies the negative entry with what it has left...
        await b.lookup(GHOST, "buy")
    fake.users[GHOST] = "Ghost"  # ...the user signs up...
    await trio.sleep(0.25)
    # ...and b's copy has expired with a's original: nobody waits 2 x not_found_ttl.
    assert (await b.lookup(GHOST, "buy")).display_name == "Ghost"
    assert len(fake.calls) == 3


@pytest.mark.faults
async def test_a_dead_or_slow_redis_only_costs_calls_to_the_profile_service(
    instance: Instance, fake: FakeProfileService, private_redis: PrivateRedis
) -> None:
    a, b = instance(private_redis.url), instance(private_redis.url)
    await _up(a)
    await _up(b)
    await a.lookup(ALICE, "buy")
    await b.lookup(ALICE, "buy")
    assert len(fake.calls) == 1
    private_redis.kill()
    # Nothing fails: each instance asks the profile service itself, its own cache still works.
    for cache in (a, b):
        assert (await cache.lookup(BOB, "buy")).display_name == "Bob"
        assert (await cache.lookup(BOB, "buy")).display_name == "Bob"
        with pytest.raises(NotFound):
            await cache.lookup(GHOST, "buy")
    assert len(fake.calls) == 5
    # A Redis that stops answering (paused) costs at most its timeout once, then nothing.
    private_redis.start()
    await _up(a)
    private_redis.pause(True)
    started = time.perf_counter()
    assert (await a.lookup(BOB, "sell")).display_name == "Bob"
    assert (await a.lookup(ALICE, "sell")).display_name == "Alice A."
    assert time.perf_counter() - started < 1.5
    assert a.shared is not None
    assert not a.shared.tier.up


def test_entries_round_trip_and_foreign_values_are_misses() -> None:
    profile = Profile("42", "Zoë ⛵")
    assert decode(encode(profile)) == profile
    missing = decode(encode(NotFound("user x does not exist")))
    assert isinstance(missing, NotFound)
    assert missing.message == "user x does not exist"
    for raw in (b"", b"not json", b"[1]", b'{"id": 1, "displayName": "x"}'):
        assert decode(raw) is None
