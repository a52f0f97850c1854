"""The demo page's HTTP surface: the page and its files, the dev-only token endpoint, and when
each exists. (tests/chatd/realtime/test_browser.py drives the page in a real browser.)"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from cryptography.hazmat.primitives.asymmetric import rsa

from chatd.auth.keys import demo_token_key, ensure_dev_keys
from chatd.auth.tokens import TokenVerifier, verifier_from_config
from chatd.config import AuthConfig, Config, ServerConfig
from chatd.http import create_app
from chatd.http.demo import ASSETS
from chatd.http.server import serve_http
from chatd.services import ChatService
from chatd.storage import Store

from .conftest import ALICE, KnownUsers, assert_error

STATIC = Path(__file__).resolve().parents[3] / "chatd" / "http" / "static"


@pytest.fixture
async def serve_app(
    nursery: trio.Nursery,
    sqlite_store: Store,
    verifier: TokenVerifier,
) -> AsyncIterator[Callable[..., Any]]:
    """``await serve_app(demo_page=..., token_key=...)`` -> a client of a fresh server."""
    stops: list[trio.Event] = []
    clients: list[httpx.AsyncClient] = []

    async def start(
        *, demo_page: bool = True, token_key: rsa.RSAPrivateKey | None = None
    ) -> httpx.AsyncClient:
        config = Config(
            server=replace(ServerConfig(bind="127.0.0.1:0", shutdown_grace=1), demo_page=demo_page)
        )
        service = ChatService(sqlite_store, KnownUsers())
        app = create_app(service, verifier, config, demo_token_key=token_key)
        stop = trio.Event()
        binds = await nursery.start(
            functools.partial(serve_http, app, config, shutdown_trigger=stop.wait)
        )
        stops.append(stop)
        clients.append(httpx.AsyncClient(base_url=binds[0], timeout=30))
        return clients[-1]

    yield start
    for client in clients:
        await client.aclose()
    for stop in stops:
        stop.set()


async def test_page_and_every_file_it_loads_are_served_locally(serve_app: Any) -> None:
    client = await serve_app()
    page = await client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert "default-src 'self'" in page.headers["content-security-policy"]
    loaded = re.findall(r'<(?:script|link)[^>]+(?:src|href)="([^"]+)"', page.text)
    assert "/demo/static/vendor/stomp.umd.min.js" in loaded
    assert "/demo/static/vendor/sockjs.min.js" in loaded
    for url in loaded:
        if url.startswith("data:"):
            continue
        assert url.startswith("/"), f"{url} is not served by chatd"
        answer = await client.get(url)
        assert answer.status_code == 200, url
        expected = "text/javascript" if url.endswith(".js") else "text/css"
        assert answer.headers["content-type"].startswith(expected), url
        assert answer.headers["x-content-type-options"] == "nosniff"
    # demo.js imports its sibling modules: every listed file is served, byte for byte.
    for name in ASSETS:
        answer = await client.get(f"/demo/static/{name}")
        assert answer.status_code == 200, name
        assert answer.content == (STATIC / name).read_bytes(), name


async def test_unknown_demo_file_is_a_json_404_and_no_path_reaches_the_disk(serve_app: Any) -> None:
    client = await serve_app()
    for path in (
        "/demo/static/nope.js",
        "/demo/static/../app.py",
        "/demo/static/vendor/../../demo.py",
        "/demo/static/%2e%2e/demo.py",
    ):
        assert_error(await client.get(path), 404)


async def test_demo_page_off_serves_only_the_vendored_libraries(
    serve_app: Any, signing_key: rsa.RSAPrivateKey
) -> None:
    client = await serve_app(demo_page=False, token_key=signing_key)
    assert_error(await client.get("/"), 404)
    assert_error(await client.get("/demo/static/demo.js"), 404)
    assert_error(await client.get("/demo/static/index.html"), 404)
    assert_error(await client.post("/demo/token", json={"email": ALICE}), 404)
    # SockJS's iframe page loads sockjs-client from here, demo or not.
    library = await client.get("/demo/static/vendor/sockjs.min.js")
    assert library.status_code == 200
    assert library.content == (STATIC / "vendor" / "sockjs.min.js").read_bytes()


async def test_demo_token_signs_in_as_the_normalized_email(
    serve_app: Any, signing_key: rsa.RSAPrivateKey
) -> None:
    client = await serve_app(token_key=signing_key)
    answer = await client.post("/demo/token", json={"email": "  Alice@Example.COM "})
    assert answer.status_code == 200, answer.text
    assert answer.headers["cache-control"] == "no-store"
    body = answer.json()
    assert body["email"] == ALICE
    assert body["expiresIn"] > 0
    unread = await client.get(
        "/api/chat/unread", headers={"Authorization": f"Bearer {body['token']}"}
    )
    assert unread.status_code == 200, unread.text
    assert unread.json()["total"] == 0


@pytest.mark.parametrize(
    ("body", "status"),
    [({"email": "not-an-email"}, 400), ({}, 400), ({"email": 7}, 400), ([ALICE], 400)],
)
async def test_demo_token_refuses_bad_input(
    serve_app: Any, signing_key: rsa.RSAPrivateKey, body: Any, status: int
) -> None:
    client = await serve_app(token_key=signing_key)
    assert_error(await client.post("/demo/token", json=body), status)


async def test_demo_token_needs_a_json_body(serve_app: Any, signing_key: rsa.RSAPrivateKey) -> None:
    # A form post is what another origin could send without a CORS preflight.
    client = await serve_app(token_key=signing_key)
    assert_error(await client.post("/demo/token", data={"email": ALICE}), 400)


async def test_no_token_endpoint_without_a_key(serve_app: Any) -> None:
    client = await serve_app(token_key=None)
    assert (await client.get("/")).status_code == 200
    assert_error(await client.post("/demo/token", json={"email": ALICE}), 404)


def test_token_key_only_for_the_demo_page_with_the_dev_keys(tmp_path: Path) -> None:
    embedded = Config(server=ServerConfig(data_dir=tmp_path))
    key = demo_token_key(embedded)
    assert key is not None
    # It is the dev pair the server verifies with.
    from chatd.auth.tokens import mint_token

    assert verifier_from_config(embedded).verify(mint_token(key, ALICE)) == ALICE

    _, public, _ = ensure_dev_keys(tmp_path / "other")
    production = replace(embedded, auth=AuthConfig(public_key_file=public))
    assert demo_token_key(production) is None
    jwks = replace(embedded, auth=AuthConfig(jwks_url="https://auth.example.com/jwks.json"))
    assert demo_token_key(jwks) is None
    no_demo = replace(embedded, server=replace(embedded.server, demo_page=False))
    assert demo_token_key(no_demo) is None


def test_vendored_files_match_their_record_and_keep_their_licenses() -> None:
    vendor = STATIC / "vendor"
    lines = [
        line.split()
        for line in (vendor / "VERSIONS").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    recorded = {name: (package, digest) for name, package, digest in lines}
    assert set(recorded) == {
        "stomp.umd.min.js",
        "LICENSE.stompjs",
        "sockjs.min.js",
        "LICENSE.sockjs-client",
    }
    assert recorded["stomp.umd.min.js"][0] == "@stomp/stompjs@7.5.0"
    assert recorded["sockjs.min.js"][0] == "sockjs-client@1.6.1"
    for name, (_, digest) in recorded.items():
        assert hashlib.sha256((vendor / name).read_bytes()).hexdigest() == digest, name
    assert "Apache License" in (vendor / "LICENSE.stompjs").read_text()
    assert (
        "MIT" in (vendor / "LICENSE.sockjs-client").read_text()
        or "Permission is hereby granted" in (vendor / "LICENSE.sockjs-client").read_text()
    )
    for name in ASSETS:
        assert (STATIC / name).is_file(), name
