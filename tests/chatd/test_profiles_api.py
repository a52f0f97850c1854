"""`/api/chat/init` through the whole server with `[profiles] provider = "remote"` against a
fake profile service: found profiles, 404 for an unknown user, 503 with Retry-After."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric import rsa

from chatd.auth.keys import generate_private_key, private_pem
from chatd.config import ProfilesConfig
from chatd.profiles import BreakerState, CachedProfiles
from chatd.supervisor import build_profiles

from .api.conftest import assert_error
from .fakes import FakeProfileService
from .realtime.conftest import ALICE, BOB, Chat, chat_config, start_chat


@pytest.fixture(scope="module")
def service_key() -> rsa.RSAPrivateKey:
    return generate_private_key()


@pytest.fixture
async def fake(nursery: trio.Nursery, service_key: rsa.RSAPrivateKey) -> FakeProfileService:
    service = FakeProfileService(
        service_key.public_key(), users={ALICE: "Alice Adams", BOB: "Bob Brown"}
    )
    await nursery.start(service.run)
    return service


def remote_profiles(tmp_path: Path, key: rsa.RSAPrivateKey, url: str) -> ProfilesConfig:
    key_file = tmp_path / "service-private.pem"
    key_file.write_bytes(private_pem(key))
    return ProfilesConfig(
        provider="remote",
        url=url,
        service_private_key_file=key_file,
        kid="chat-service-1",
        timeout=0.5,
        breaker_failures=2,
        breaker_reset_seconds=60,
        cache_not_found_ttl=0,
    )


@pytest.fixture
async def remote_chat(
    nursery: trio.Nursery, tmp_path: Path, fake: FakeProfileService, service_key: rsa.RSAPrivateKey
) -> AsyncIterator[Chat]:
    keys = tmp_path / "keys"
    from chatd.auth.keys import ensure_dev_keys

    private, public, _ = ensure_dev_keys(keys)
    config = chat_config(tmp_path, f"sqlite:///{tmp_path / 'chat.sqlite3'}", public)
    config = dataclasses.replace(config, profiles=remote_profiles(tmp_path, service_key, fake.url))
    running = await start_chat(nursery, config, private.read_bytes())
    async with running.client:
        yield running
    running.scope.cancel()


async def test_init_uses_the_profile_service(remote_chat: Chat, fake: FakeProfileService) -> None:
    answer = await remote_chat.client.post(
        "/api/chat/init", json={"toEmail": BOB, "intent": "buy"}, headers=remote_chat.auth(ALICE)
    )
    assert answer.status_code == 200, answer.text
    participants = {p["email"]: p for p in answer.json()["participants"]}
    assert participants[BOB] == {
        "profileId": f"buy:{BOB}",
        "email": BOB,
        "displayName": "Bob Brown",
    }
    assert participants[ALICE]["displayName"] == "Alice Adams"
    assert fake.refused == []
    assert len(fake.tokens) == 2
    again = await remote_chat.client.post(
        "/api/chat/init", json={"toEmail": ALICE, "intent": "buy"}, headers=remote_chat.auth(BOB)
    )
    assert again.json()["sessionId"] == answer.json()["sessionId"]
    assert len(fake.calls) == 2  # both profiles came from the cache


async def test_init_looks_both_profiles_up_at_once(
    remote_chat: Chat, fake: FakeProfileService
) -> None:
    fake.delay = 0.2  # long enough for the second look-up to start before the first ends
    answer = await remote_chat.client.post(
        "/api/chat/init", json={"toEmail": BOB, "intent": "rent"}, headers=remote_chat.auth(ALICE)
    )
    assert answer.status_code == 200, answer.text
    assert fake.most_in_flight == 2


async def test_init_unknown_user_is_404_and_nothing_stored(
    remote_chat: Chat, fake: FakeProfileService
) -> None:
    answer = await remote_chat.client.post(
        "/api/chat/init",
        json={"toEmail": "ghost@example.com", "intent": "buy"},
        headers=remote_chat.auth(ALICE),
    )
    body = assert_error(answer, 404)
    assert body["errorMsg"] == "user ghost@example.com does not exist"
    sessions = await remote_chat.client.get("/api/chat/sessions", headers=remote_chat.auth(ALICE))
    assert sessions.status_code == 200
    listed = sessions.json()
    assert (listed["sessions"] if isinstance(listed, dict) else listed) == []


async def test_init_when_the_profile_service_fails_is_503_with_retry_after(
    remote_chat: Chat, fake: FakeProfileService
) -> None:
    fake.status = 500
    for _ in range(2):
        answer = await remote_chat.client.post(
            "/api/chat/init",
            json={"toEmail": BOB, "intent": "sell"},
            headers=remote_chat.auth(ALICE),
        )
        body = assert_error(answer, 503)
        assert body["errorMsg"].startswith("profile service unavailable")
        assert int(answer.headers["Retry-After"]) >= 1
    calls = len(fake.calls)
    # Two failures opened the breaker: the next lookup fails fast, without a call.
    answer = await remote_chat.client.post(
        "/api/chat/init", json={"toEmail": BOB, "intent": "sell"}, headers=remote_chat.auth(ALICE)
    )
    body = assert_error(answer, 503)
    assert "circuit open" in body["errorMsg"]
    assert 1 <= int(answer.headers["Retry-After"]) <= 60
    assert len(fake.calls) == calls


async def test_slow_profile_service_times_out_as_503(
    remote_chat: Chat, fake: FakeProfileService
) -> None:
    fake.delay = 2
    answer = await remote_chat.client.post(
        "/api/chat/init", json={"toEmail": BOB, "intent": "buy"}, headers=remote_chat.auth(ALICE)
    )
    body = assert_error(answer, 503)
    assert "timed out" in body["errorMsg"]


async def test_build_profiles_from_config(tmp_path: Path, service_key: rsa.RSAPrivateKey) -> None:
    from chatd.config import load_config

    key_file = tmp_path / "k.pem"
    key_file.write_bytes(private_pem(service_key))
    config = load_config(
        None,
        {
            "CHATD_PROFILE_SERVICE_URL": "http://127.0.0.1:9",
            "CHATD_SERVICE_PRIVATE_KEY": str(key_file),
            "CHATD_PROFILES__BREAKER_FAILURES": "7",
        },
    )
    provider = build_profiles(config)
    assert isinstance(provider, CachedProfiles)
    assert provider.breaker.min_failures == 7
    assert provider.breaker.state is BreakerState.CLOSED
    await provider.upstream.aclose()  # type: ignore[attr-defined]


async def test_metrics_show_the_profile_cache_and_breaker(
    remote_chat: Chat, fake: FakeProfileService
) -> None:
    from .realtime.test_metrics import scrape, value

    for caller, peer in ((ALICE, BOB), (BOB, ALICE)):
        answer = await remote_chat.client.post(
            "/api/chat/init",
            json={"toEmail": peer, "intent": "buy"},
            headers=remote_chat.auth(caller),
        )
        assert answer.status_code == 200
    got = await scrape(remote_chat)
    # The first init fetched both profiles; the second found both in the cache.
    assert value(got, "chatd_profile_cache_misses_total") == 2
    assert value(got, "chatd_profile_cache_hits_total") == 2
    assert value(got, "chatd_profile_breaker_state", state="closed") == 1
    fake.status = 500
    for _ in range(2):
        await remote_chat.client.post(
            "/api/chat/init",
            json={"toEmail": BOB, "intent": "sell"},
            headers=remote_chat.auth(ALICE),
        )
    got = await scrape(remote_chat)
    assert value(got, "chatd_profile_breaker_state", state="open") == 1
    assert value(got, "chatd_profile_breaker_state", state="closed") == 0
