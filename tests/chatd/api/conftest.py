"""Fixtures for the REST tests: a real server on 127.0.0.1:0 inside the test's nursery.

`store` (from tests/chatd/conftest.py) runs each test over PostgreSQL and SQLite; tests that
do not care about the backend use `sqlite_store`. Tokens are signed with a key made once per
run; the service clock is a `FakeClock` the test moves by hand.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from cryptography.hazmat.primitives.asymmetric import rsa

from chatd.auth.keys import generate_private_key
from chatd.auth.tokens import TokenVerifier, mint_token
from chatd.config import Config, LimitsConfig, ServerConfig
from chatd.domain.errors import NotFound
from chatd.http import create_app
from chatd.http.server import serve_http
from chatd.profiles import LocalProfileProvider, Profile
from chatd.services import ChatService, Readiness
from chatd.storage import Store, open_store

ALICE, BOB, CAROL = "alice@example.com", "bob@example.com", "carol@example.com"
UNKNOWN = "ghost@example.com"


class FakeClock:
    """A settable service clock (starts at a fixed instant, moves only when told)."""

    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class KnownUsers(LocalProfileProvider):
    """A stand-in for the profile service that knows every user except `UNKNOWN`."""

    async def lookup(self, email: str, intent: str) -> Profile:
        if email == UNKNOWN:
            raise NotFound(f"unknown user {email!r}")
        return await super().lookup(email, intent)


@pytest.fixture(scope="session")
def signing_key() -> rsa.RSAPrivateKey:
    return generate_private_key()


@pytest.fixture(scope="session")
def verifier(signing_key: rsa.RSAPrivateKey) -> TokenVerifier:
    return TokenVerifier(signing_key.public_key())


@pytest.fixture
def auth(signing_key: rsa.RSAPrivateKey) -> Callable[..., dict[str, str]]:
    """``auth(email, **mint_kwargs)`` -> the Authorization header of a valid token."""

    @functools.cache
    def cached(email: str) -> str:
        return mint_token(signing_key, email)

    def headers(email: str, **kwargs: Any) -> dict[str, str]:
        token = mint_token(signing_key, email, **kwargs) if kwargs else cached(email)
        return {"Authorization": f"Bearer {token}"}

    return headers


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def limits() -> LimitsConfig:
    """The `[limits]` the service runs with; tests override it to reach a limit quickly."""
    return LimitsConfig()


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[Store]:
    async with open_store(f"sqlite:///{tmp_path / 'api.sqlite3'}") as opened:
        await opened.migrate()
        yield opened


@dataclass
class Server:
    """A running server: `client` talks to it, `service` is the object behind it."""

    url: str
    client: httpx.AsyncClient
    service: ChatService
    readiness: Readiness
    store: Store
    config: Config
    stop: trio.Event = field(default_factory=trio.Event)

    @property
    def address(self) -> tuple[str, int]:
        host, _, port = self.url.removeprefix("http://").rpartition(":")
        return host, int(port)


async def start_server(
    nursery: trio.Nursery,
    store: Store,
    verifier: TokenVerifier,
    clock: FakeClock,
    limits: LimitsConfig,
    **server_options: Any,
) -> Server:
    """Serve a fresh app over `store` on an ephemeral port; stopped by `Server.stop`."""
    server_config = replace(ServerConfig(bind="127.0.0.1:0", shutdown_grace=1), **server_options)
    config = Config(server=server_config, limits=limits)
    service = ChatService(store, KnownUsers(), limits=limits, clock=clock)
    readiness = Readiness(ping_timeout=5)
    readiness.add_store(store)
    readiness.started = True
    app = create_app(service, verifier, config, readiness=readiness)
    stop = trio.Event()
    binds = await nursery.start(
        functools.partial(serve_http, app, config, shutdown_trigger=stop.wait)
    )
    client = httpx.AsyncClient(base_url=binds[0], timeout=30)
    return Server(binds[0], client, service, readiness, store, config, stop)


@pytest.fixture
async def server(
    nursery: trio.Nursery,
    store: Store,
    verifier: TokenVerifier,
    clock: FakeClock,
    limits: LimitsConfig,
) -> AsyncIterator[Server]:
    """A server over each backend."""
    running = await start_server(nursery, store, verifier, clock, limits)
    async with running.client:
        yield running
    running.stop.set()


@pytest.fixture
async def sqlite_server(
    nursery: trio.Nursery,
    sqlite_store: Store,
    verifier: TokenVerifier,
    clock: FakeClock,
    limits: LimitsConfig,
) -> AsyncIterator[Server]:
    """A server over SQLite only, for tests where the backend does not matter."""
    running = await start_server(nursery, sqlite_store, verifier, clock, limits)
    async with running.client:
        yield running
    running.stop.set()


async def init_session(
    server: Server,
    auth: Callable[..., dict[str, str]],
    caller: str = ALICE,
    peer: str = BOB,
    intent: str = "buy",
) -> str:
    """Open (or find) the session of `caller` and `peer`; return its id."""
    answer = await server.client.post(
        "/api/chat/init", json={"toEmail": peer, "intent": intent}, headers=auth(caller)
    )
    assert answer.status_code == 200, answer.text
    sid: str = answer.json()["sessionId"]
    return sid


async def send(
    server: Server,
    auth: Callable[..., dict[str, str]],
    sid: str,
    content: str,
    cmid: str,
    caller: str = ALICE,
) -> httpx.Response:
    return await server.client.post(
        "/api/chat/message",
        json={"sessionId": sid, "content": content, "clientMessageId": cmid},
        headers=auth(caller),
    )


def assert_error(answer: httpx.Response, status: int) -> dict[str, Any]:
    """The answer has `status` and the contract's error body; return the body."""
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = answer.json()
    assert set(body) >= {"uid", "status", "timestamp", "errorMsg"}
    assert body["status"] == HTTPStatus(status).name
    assert body["timestamp"].endswith("Z")
    assert body["errorMsg"]
    return body
