"""Client authentication end to end, with keys from a (fake) identity provider's JWKS.

Every defective token is refused on REST (401 and the error body) and on STOMP CONNECT over
``/ws`` (ERROR, then close), and nothing it tried to write is stored. A key the identity
provider rotates in is picked up without a restart; unknown kids cannot make chatd hammer the
JWKS. A WebSocket session is closed with an ERROR when its token expires.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric import rsa

from chatd.auth.keys import generate_private_key, public_pem
from chatd.auth.tokens import mint_token
from chatd.config import AuthConfig, Config
from stomp import Frame
from stomp.trio import CREDENTIALS_EXPIRED_MESSAGE

from ..api.conftest import assert_error
from ..fakes import FakeIdentityProvider
from .conftest import ALICE, BOB, Chat, chat_config, raw_ws_peer, start_chat

ISSUER, AUDIENCE = "https://id.example.com/", "chat"


@pytest.fixture(scope="module")
def idp_key() -> rsa.RSAPrivateKey:
    return generate_private_key()


@pytest.fixture(scope="module")
def other_key() -> rsa.RSAPrivateKey:
    return generate_private_key()


@pytest.fixture
async def idp(nursery: trio.Nursery, idp_key: rsa.RSAPrivateKey) -> FakeIdentityProvider:
    provider = FakeIdentityProvider({"k1": idp_key.public_key()})
    await nursery.start(provider.run)
    return provider


def jwks_config(tmp_path: Path, url: str, idp: FakeIdentityProvider, **auth: Any) -> Config:
    config = chat_config(tmp_path, url, tmp_path / "unused.pem")
    options: dict[str, Any] = {
        "jwks_url": idp.jwks_url,
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "leeway": 2,
        "jwks_min_refresh_seconds": 60,
    } | auth
    return dataclasses.replace(config, auth=AuthConfig(**options))


def token(key: rsa.RSAPrivateKey, email: str = ALICE, kid: str | None = "k1", **kwargs: Any) -> str:
    options: dict[str, Any] = {"issuer": ISSUER, "audience": AUDIENCE, "ttl": 600} | kwargs
    return mint_token(key, email, kid=kid, **options)


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


@pytest.fixture
async def jwks_chat(
    nursery: trio.Nursery, store_url: str, tmp_path: Path, idp: FakeIdentityProvider
) -> AsyncIterator[Chat]:
    running = await start_chat(nursery, jwks_config(tmp_path, store_url, idp), b"")
    async with running.client:
        yield running
    running.scope.cancel()


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def bad_tokens(
    key: rsa.RSAPrivateKey, other: rsa.RSAPrivateKey
) -> list[tuple[str, str | None, str]]:
    """(case, token or None for no header, the reason the server gives)."""
    now = int(time.time())
    claims = {"sub": ALICE, "exp": now + 600, "iss": ISSUER, "aud": AUDIENCE}
    signing_input = f"{_b64({'alg': 'HS256', 'typ': 'JWT', 'kid': 'k1'})}.{_b64(claims)}"
    mac = hmac.new(public_pem(key.public_key()), signing_input.encode(), hashlib.sha256).digest()
    hs256 = f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
    none = f"{_b64({'alg': 'none', 'typ': 'JWT', 'kid': 'k1'})}.{_b64(claims)}."
    return [
        ("no token", None, "missing bearer token"),
        ("malformed", "not.a-jwt", "malformed token"),
        ("expired", token(key, now=now - 3600), "token expired"),
        ("not yet valid", token(key, extra_claims={"nbf": now + 600}), "token not yet valid"),
        ("wrong key", token(other), "token signature is invalid"),
        ("alg none", none, "token algorithm not allowed (RS256 only)"),
        ("HS256 with the public key", hs256, "token algorithm not allowed (RS256 only)"),
        ("unknown kid", token(other, kid="k-unknown"), "token signed with an unknown key"),
        ("wrong iss", token(key, issuer="https://evil.example.com/"), "token issuer not accepted"),
        ("wrong aud", token(key, audience="billing"), "token audience not accepted"),
        ("sub not an email", token(key, email="root"), "token subject is not an email address"),
    ]


async def stomp_attempt(
    nursery: trio.Nursery, chat: Chat, bad: str | None, sid: str
) -> list[Frame]:
    """CONNECT with `bad` and, in the same write, a chat.send: every frame the server sent."""
    peer, _ = await raw_ws_peer(nursery, chat)
    connect = {"accept-version": "1.2", "host": "localhost"}
    if bad is not None:
        connect["Authorization"] = f"Bearer {bad}"
    body = json.dumps({"sessionId": sid, "content": "sneaky", "clientMessageId": "x1"}).encode()
    await peer.send_many(
        [
            ("CONNECT", connect, b""),
            (
                "SEND",
                {
                    "destination": "/app/chat.send",
                    "receipt": "r1",
                    "content-type": "application/json",
                },
                body,
            ),
        ]
    )
    with trio.fail_after(10):
        return await peer.frames_until_eof()


async def test_every_bad_token_is_refused_on_rest_and_stomp_and_nothing_is_stored(
    nursery: trio.Nursery,
    jwks_chat: Chat,
    idp_key: rsa.RSAPrivateKey,
    other_key: rsa.RSAPrivateKey,
) -> None:
    chat = jwks_chat
    good = bearer(token(idp_key))
    opened = await chat.client.post(
        "/api/chat/init", json={"toEmail": BOB, "intent": "buy"}, headers=good
    )
    assert opened.status_code == 200, opened.text
    sid = opened.json()["sessionId"]

    for case, bad, reason in bad_tokens(idp_key, other_key):
        headers = {} if bad is None else bearer(bad)
        answer = await chat.client.post(
            "/api/chat/message",
            json={"sessionId": sid, "content": "sneaky", "clientMessageId": f"rest-{case}"},
            headers=headers,
        )
        assert assert_error(answer, 401)["errorMsg"] == reason, case
        answer = await chat.client.post(
            "/api/chat/init",
            json={"toEmail": "carol@example.com", "intent": "buy"},
            headers=headers,
        )
        assert assert_error(answer, 401)["errorMsg"] == reason, case

        frames = await stomp_attempt(nursery, chat, bad, sid)
        assert [f.command for f in frames] == ["ERROR"], (case, frames)
        assert frames[0].get("message") == "unauthenticated", case
        assert frames[0].body.decode() == reason, case

    history = await chat.client.get(f"/api/chat/{sid}/history", headers=good)
    assert history.status_code == 200
    assert history.json() == []
    sessions = await chat.client.get("/api/chat/sessions", headers=good)
    listed = sessions.json()
    assert len(listed["sessions"] if isinstance(listed, dict) else listed) == 1  # alice-bob only


async def test_unknown_kid_refresh_is_rate_limited(
    nursery: trio.Nursery,
    jwks_chat: Chat,
    idp: FakeIdentityProvider,
    idp_key: rsa.RSAPrivateKey,
) -> None:
    chat = jwks_chat
    fetched = idp.fetches  # the start-up load
    new_key = generate_private_key()
    rotated = token(new_key, kid="k2")
    answer = await chat.client.get("/api/chat/unread", headers=bearer(rotated))
    assert_error(answer, 401)  # not published yet: refused, after one refresh
    assert idp.fetches == fetched + 1

    idp.keys["k2"] = new_key.public_key()
    # Within the refresh interval another unknown kid does not reach the identity provider.
    answer = await chat.client.get("/api/chat/unread", headers=bearer(rotated))
    assert_error(answer, 401)
    assert idp.fetches == fetched + 1


async def test_rotated_key_accepted_on_rest_and_stomp(
    nursery: trio.Nursery,
    tmp_path: Path,
    idp: FakeIdentityProvider,
    idp_key: rsa.RSAPrivateKey,
) -> None:
    config = jwks_config(
        tmp_path, f"sqlite:///{tmp_path / 'c.sqlite3'}", idp, jwks_min_refresh_seconds=0
    )
    chat = await start_chat(nursery, config, b"")
    async with chat.client:
        assert (
            await chat.client.get("/api/chat/unread", headers=bearer(token(idp_key)))
        ).status_code == 200
        new_key = generate_private_key()
        idp.keys = {"k2": new_key.public_key()}  # k1 retired, k2 published
        rotated = token(new_key, kid="k2")
        assert (
            await chat.client.get("/api/chat/unread", headers=bearer(rotated))
        ).status_code == 200
        peer, _ = await raw_ws_peer(nursery, chat)
        connected = await peer.connect(Authorization=f"Bearer {token(new_key, BOB, kid='k2')}")
        assert connected.get("user-name") == BOB
        # The retired key is no longer trusted once the set is re-fetched.
        answer = await chat.client.get("/api/chat/unread", headers=bearer(token(idp_key)))
        assert assert_error(answer, 401)["errorMsg"] == "token signed with an unknown key"
    chat.scope.cancel()


async def test_websocket_session_closed_when_its_token_expires(
    nursery: trio.Nursery,
    tmp_path: Path,
    idp: FakeIdentityProvider,
    idp_key: rsa.RSAPrivateKey,
) -> None:
    config = jwks_config(tmp_path, f"sqlite:///{tmp_path / 'c.sqlite3'}", idp, leeway=0)
    chat = await start_chat(nursery, config, b"")
    async with chat.client:
        peer, _ = await raw_ws_peer(nursery, chat)
        began = time.time()
        short = token(idp_key, ttl=3)
        await peer.connect(Authorization=f"Bearer {short}")
        await peer.subscribe("/user/queue/messages")
        with trio.fail_after(10):
            frames = await peer.frames_until_eof()
        assert [f.command for f in frames] == ["ERROR"]
        assert frames[0].get("message") == CREDENTIALS_EXPIRED_MESSAGE
        exp = json.loads(base64.urlsafe_b64decode(short.split(".")[1] + "=="))["exp"]
        assert time.time() >= exp  # not before the token's end
        assert time.time() - began < 10
    chat.scope.cancel()


async def test_expiry_close_can_be_turned_off(
    nursery: trio.Nursery,
    tmp_path: Path,
    idp: FakeIdentityProvider,
    idp_key: rsa.RSAPrivateKey,
) -> None:
    config = jwks_config(
        tmp_path, f"sqlite:///{tmp_path / 'c.sqlite3'}", idp, leeway=0, close_on_expiry=False
    )
    chat = await start_chat(nursery, config, b"")
    async with chat.client:
        peer, _ = await raw_ws_peer(nursery, chat)
        await peer.connect(Authorization=f"Bearer {token(idp_key, ttl=1)}")
        await trio.sleep(2.2)
        await peer.subscribe("/user/queue/messages")  # still served after the token's end
    chat.scope.cancel()


@pytest.mark.parametrize(
    ("path", "how"),
    [("/ws", "header"), ("/ws/websocket", "header"), ("/ws", "passcode"), ("/ws", "query")],
)
async def test_every_token_carrier_is_verified(
    nursery: trio.Nursery,
    tmp_path: Path,
    idp: FakeIdentityProvider,
    idp_key: rsa.RSAPrivateKey,
    other_key: rsa.RSAPrivateKey,
    path: str,
    how: str,
) -> None:
    config = jwks_config(tmp_path, f"sqlite:///{tmp_path / 'c.sqlite3'}", idp)
    chat = await start_chat(nursery, config, b"")

    async def attempt(value: str) -> list[Frame]:
        headers = {"accept-version": "1.2", "host": "localhost"}
        where = path
        if how == "header":
            headers["Authorization"] = f"Bearer {value}"
        elif how == "passcode":
            headers |= {"login": "x", "passcode": value}
        else:
            where = f"{path}?access_token={value}"
        peer, _ = await raw_ws_peer(nursery, chat, where)
        await peer.send("CONNECT", headers)
        first = await peer.frame()
        if first.command == "CONNECTED":
            await peer.send("DISCONNECT", {"receipt": "bye"})
        with trio.fail_after(10):
            return [first, *await peer.frames_until_eof()]

    async with chat.client:
        good = await attempt(token(idp_key))
        assert good[0].command == "CONNECTED"
        assert good[0].get("user-name") == ALICE
        for bad in (token(other_key), token(idp_key, now=int(time.time()) - 3600)):
            refused = await attempt(bad)
            assert [f.command for f in refused] == ["ERROR"]
            assert refused[0].get("message") == "unauthenticated"
    chat.scope.cancel()


@pytest.mark.timeout(30)
async def test_sigterm_stops_the_jwks_and_profiles_parts_in_time(
    nursery: trio.Nursery,
    tmp_path: Path,
    idp: FakeIdentityProvider,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import os
    import signal

    from chatd.auth.keys import private_pem

    key_file = tmp_path / "service.pem"
    key_file.write_bytes(private_pem(generate_private_key()))
    config = jwks_config(tmp_path, f"sqlite:///{tmp_path / 'c.sqlite3'}", idp)
    config = dataclasses.replace(
        config,
        profiles=dataclasses.replace(
            config.profiles,
            provider="remote",
            url="http://127.0.0.1:9",
            service_private_key_file=key_file,
        ),
    )
    chat = await start_chat(nursery, config, b"", handle_signals=True)
    await chat.client.aclose()
    with trio.fail_after(20):
        os.kill(os.getpid(), signal.SIGTERM)
        await chat.done.wait()
    assert "did not stop" not in caplog.text
    assert "chatd stopped" in caplog.text
