"""The profile service client, its cache and circuit breaker, against a fake profile service
on a real port that checks every service token."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import jwt
import pytest
import trio
from cryptography.hazmat.primitives.asymmetric import rsa

from chatd.auth.keys import generate_private_key
from chatd.auth.service import ServiceTokens
from chatd.domain.errors import NotFound, Unavailable
from chatd.profiles import (
    BreakerState,
    CachedProfiles,
    CircuitBreaker,
    Profile,
    RemoteProfileProvider,
)

from .fakes import FakeProfileService

ALICE, BOB = "alice@example.com", "bob@example.com"


class ManualClock:
    """The cache's and breaker's clock, moved by the test instead of waited for."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(scope="module")
def service_key() -> rsa.RSAPrivateKey:
    return generate_private_key()


@pytest.fixture
async def fake(nursery: trio.Nursery, service_key: rsa.RSAPrivateKey) -> FakeProfileService:
    service = FakeProfileService(service_key.public_key(), users={ALICE: "Alice A.", BOB: "Bob"})
    await nursery.start(service.run)
    return service


def tokens(key: rsa.RSAPrivateKey, **kwargs: object) -> ServiceTokens:
    options: dict[str, object] = {
        "issuer": "chat-service",
        "audience": "profile-service",
        "kid": "chat-service-1",
    } | kwargs
    return ServiceTokens(key, **options)  # type: ignore[arg-type]


@pytest.fixture
async def remote(
    fake: FakeProfileService, service_key: rsa.RSAPrivateKey
) -> AsyncIterator[RemoteProfileProvider]:
    provider = RemoteProfileProvider(fake.url, tokens(service_key), timeout=0.5)
    yield provider
    await provider.aclose()


async def test_remote_lookup_sends_a_valid_service_token(
    remote: RemoteProfileProvider, fake: FakeProfileService
) -> None:
    assert await remote.lookup(ALICE, "buy") == Profile(f"buy:{ALICE}", "Alice A.")
    assert fake.refused == []
    claims = jwt.decode(fake.tokens[0], options={"verify_signature": False})
    assert claims["iss"] == "chat-service"
    assert claims["sub"] == claims["aud"] == "profile-service"
    assert claims["exp"] - claims["iat"] <= 120


async def test_remote_maps_404_and_failures(
    remote: RemoteProfileProvider, fake: FakeProfileService
) -> None:
    with pytest.raises(NotFound, match=r"user ghost@example\.com does not exist"):
        await remote.lookup("ghost@example.com", "buy")
    fake.status = 500
    with pytest.raises(Unavailable, match="profile service unavailable") as caught:
        await remote.lookup(ALICE, "buy")
    assert caught.value.retry_after
    fake.status, fake.delay = None, 2.0
    with pytest.raises(Unavailable, match="timed out"):
        await remote.lookup(ALICE, "buy")


async def test_a_refused_service_token_is_unavailable_not_not_found(
    fake: FakeProfileService, service_key: rsa.RSAPrivateKey
) -> None:
    wrong = RemoteProfileProvider(fake.url, tokens(generate_private_key()))
    try:
        with pytest.raises(Unavailable):
            await wrong.lookup(ALICE, "buy")
    finally:
        await wrong.aclose()
    assert fake.refused
    assert fake.refused[0].startswith("invalid token")


async def test_unreachable_service_is_unavailable(service_key: rsa.RSAPrivateKey) -> None:
    listener = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listener[0].socket.getsockname()[1]
    await listener[0].aclose()  # nothing listens there any more
    provider = RemoteProfileProvider(f"http://127.0.0.1:{port}", tokens(service_key))
    try:
        with pytest.raises(Unavailable, match="profile service unavailable"):
            await provider.lookup(ALICE, "buy")
    finally:
        await provider.aclose()


def test_service_token_is_cached_and_renewed_before_expiry(service_key: rsa.RSAPrivateKey) -> None:
    start = time.time()
    now = [start]
    minter = tokens(service_key, ttl=60, clock=lambda: now[0])
    first = minter.token()
    now[0] += 30  # 30 s left: more than the 20 s renewal margin
    assert minter.token() == first
    assert minter.minted == 1
    now[0] += 11  # 19 s left: renewed
    second = minter.token()
    assert second != first
    assert minter.minted == 2
    claims = jwt.decode(
        second,
        service_key.public_key(),
        algorithms=["RS256"],
        audience="profile-service",
        leeway=60,
    )
    assert claims["iat"] == int(start + 41)
    assert jwt.get_unverified_header(second)["kid"] == "chat-service-1"
    with pytest.raises(ValueError, match=r"1\.\.120"):
        tokens(service_key, ttl=121)


async def test_cache_hits_misses_and_not_found_ttl(
    remote: RemoteProfileProvider, fake: FakeProfileService
) -> None:
    clock = ManualClock()
    cache = CachedProfiles(remote, ttl=60, not_found_ttl=0.2, clock=clock)
    assert (await cache.lookup(ALICE, "buy")).display_name == "Alice A."
    assert (await cache.lookup(ALICE, "buy")).display_name == "Alice A."
    assert (await cache.lookup(ALICE, "sell")).id == f"sell:{ALICE}"
    assert (cache.hits, cache.misses, len(fake.calls)) == (1, 2, 2)
    for _ in range(2):
        with pytest.raises(NotFound):
            await cache.lookup("carol@example.com", "buy")
    assert len(fake.calls) == 3  # the 404 was cached...
    fake.users["carol@example.com"] = "Carol"
    clock.advance(0.25)  # ...for not_found_ttl only
    assert (await cache.lookup("carol@example.com", "buy")).display_name == "Carol"
    assert len(fake.calls) == 4


async def test_single_flight_100_concurrent_lookups_make_one_call(
    remote: RemoteProfileProvider, fake: FakeProfileService
) -> None:
    cache = CachedProfiles(remote)
    fake.delay = 0.2
    results: list[Profile] = []

    async def one() -> None:
        results.append(await cache.lookup(BOB, "buy"))

    async with trio.open_nursery() as nursery:
        for _ in range(100):
            nursery.start_soon(one)
    assert fake.calls == [(BOB, "buy")]
    assert len(results) == 100
    assert {r.display_name for r in results} == {"Bob"}
    assert (cache.misses, cache.hits) == (1, 99)


async def test_single_flight_shares_a_failure_too(
    remote: RemoteProfileProvider, fake: FakeProfileService
) -> None:
    cache = CachedProfiles(remote)
    fake.delay, fake.status = 0.2, 503
    errors: list[Exception] = []

    async def one() -> None:
        try:
            await cache.lookup(BOB, "buy")
        except Unavailable as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        for _ in range(20):
            nursery.start_soon(one)
    assert len(errors) == 20
    assert len(fake.calls) == 1


async def test_breaker_opens_serves_cache_fails_fast_then_half_opens_and_closes(
    remote: RemoteProfileProvider, fake: FakeProfileService
) -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(
        min_failures=3, failure_rate=0.5, window=10, reset_after=0.5, clock=clock
    )
    cache = CachedProfiles(remote, breaker, ttl=60, stale_if_error=False, clock=clock)
    await cache.lookup(ALICE, "buy")  # cached while healthy
    fake.status = 500
    for n in range(3):
        with pytest.raises(Unavailable):
            await cache.lookup(f"user{n}@example.com", "buy")
    assert breaker.state is BreakerState.OPEN
    calls = len(fake.calls)

    # Open: uncached lookups fail at once, without calling; cached ones are served.
    with pytest.raises(Unavailable, match="circuit open") as caught:
        await cache.lookup(BOB, "buy")
    assert caught.value.retry_after is not None
    assert caught.value.retry_after >= 1
    assert (await cache.lookup(ALICE, "buy")).display_name == "Alice A."
    assert len(fake.calls) == calls

    # Half-open after the cool-down: one probe; its failure opens the breaker again.
    clock.advance(0.55)
    assert breaker.state is BreakerState.HALF_OPEN
    with pytest.raises(Unavailable, match="profile service unavailable"):
        await cache.lookup(BOB, "buy")
    assert len(fake.calls) == calls + 1
    assert breaker.state is BreakerState.OPEN

    # The service recovers: the next probe succeeds and closes the breaker.
    fake.status = None
    clock.advance(0.55)
    assert (await cache.lookup(BOB, "buy")).display_name == "Bob"
    assert breaker.state is BreakerState.CLOSED
    assert breaker.opened == 2


async def test_stale_profile_served_when_the_service_fails(
    remote: RemoteProfileProvider, fake: FakeProfileService
) -> None:
    clock = ManualClock()
    cache = CachedProfiles(remote, ttl=0.1, stale_if_error=True, clock=clock)
    await cache.lookup(ALICE, "buy")
    clock.advance(0.15)
    fake.status = 503
    assert (await cache.lookup(ALICE, "buy")).display_name == "Alice A."
    assert cache.stale == 1
    assert len(fake.calls) == 2  # it did ask, and fell back


def test_breaker_needs_the_rate_not_just_the_count() -> None:
    now = [0.0]
    breaker = CircuitBreaker(
        min_failures=2, failure_rate=0.5, window=10, reset_after=5, clock=lambda: now[0]
    )
    for _ in range(6):
        breaker.record(True)
    breaker.record(False)
    breaker.record(False)  # 2 of 8 failed: 25 %
    assert breaker.state is BreakerState.CLOSED
    now[0] = 11  # the successes age out of the window
    breaker.record(False)
    breaker.record(False)
    assert breaker.state is BreakerState.OPEN
    assert breaker.retry_after() == 5
    assert not breaker.allow()
    now[0] = 16
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # only one at a time
    breaker.release()  # the probe was cancelled
    assert breaker.allow()


async def test_a_cancelled_leader_hands_the_call_to_a_waiter(
    remote: RemoteProfileProvider, fake: FakeProfileService
) -> None:
    breaker = CircuitBreaker(min_failures=1, reset_after=60)
    cache = CachedProfiles(remote, breaker)
    fake.delay = 0.3
    got: list[Profile] = []

    async def waiter() -> None:
        got.append(await cache.lookup(BOB, "buy"))

    async with trio.open_nursery() as nursery:
        with trio.CancelScope() as leader:
            nursery.start_soon(waiter)
            leader.deadline = trio.current_time() + 0.1
            await cache.lookup(BOB, "buy")  # cancelled mid-call (its client went away)
    assert [p.display_name for p in got] == ["Bob"]
    assert len(fake.calls) == 2  # the waiter asked again itself
    assert breaker.state is BreakerState.CLOSED  # a cancellation is no failure
