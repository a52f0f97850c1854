"""Readiness, and 503 when the store goes away (PostgreSQL behind a proxy the test cuts)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import pytest
import trio

from chatd.storage import open_store
from tests.chatd.api.conftest import ALICE, assert_error, init_session, send, start_server


class CuttableProxy:
    """A TCP forwarder to PostgreSQL; `cut()` drops every connection and refuses new ones."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.scope = trio.CancelScope()
        self.port = 0

    async def run(self, *, task_status: trio.TaskStatus[None]) -> None:
        with self.scope:
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            self.port = listeners[0].socket.getsockname()[1]
            task_status.started()
            await trio.serve_listeners(self._handle, listeners)

    def cut(self) -> None:
        self.scope.cancel()

    async def _handle(self, client: trio.SocketStream) -> None:
        upstream = await trio.open_tcp_stream(*self.target)
        async with client, upstream, trio.open_nursery() as nursery:
            nursery.start_soon(self._pump, client, upstream, nursery)
            nursery.start_soon(self._pump, upstream, client, nursery)

    @staticmethod
    async def _pump(src: trio.SocketStream, dst: trio.SocketStream, nursery: trio.Nursery) -> None:
        try:
            while data := await src.receive_some(65536):
                await dst.send_all(data)
        except trio.BrokenResourceError:
            pass
        nursery.cancel_scope.cancel()


@pytest.fixture
async def proxied_pg_url(nursery, postgres_url) -> AsyncIterator[tuple[str, CuttableProxy]]:
    parts = urlsplit(postgres_url)
    proxy = CuttableProxy((parts.hostname or "127.0.0.1", parts.port or 5432))
    await nursery.start(proxy.run)
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0] + "@" if len(netloc) == 2 else ""
    yield urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{proxy.port}")), proxy
    proxy.cut()


async def test_ready_and_live(sqlite_server) -> None:
    live = await sqlite_server.client.get("/health/live")
    assert (live.status_code, live.json()) == (200, {"status": "up"})
    ready = await sqlite_server.client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "checks": {"store": "up"}}


@pytest.mark.parametrize(
    ("started", "draining", "state"), [(False, False, "starting"), (True, True, "draining")]
)
async def test_not_ready_while_starting_or_draining(sqlite_server, started, draining, state):
    sqlite_server.readiness.started = started
    sqlite_server.readiness.draining = draining
    answer = await sqlite_server.client.get("/health/ready")
    assert assert_error(answer, 503)["checks"]["supervisor"] == state
    assert (await sqlite_server.client.get("/health/live")).status_code == 200


async def test_503_when_the_store_goes_down(
    nursery, proxied_pg_url, verifier, clock, limits, auth
) -> None:
    url, proxy = proxied_pg_url
    store = open_store(url, pool_size=2, connect_timeout=1, pool_timeout=1)
    await store.open()
    try:
        await store.migrate()
        server = await start_server(nursery, store, verifier, clock, limits)
        async with server.client:
            sid = await init_session(server, auth)
            assert (await send(server, auth, sid, "before", "c1")).status_code == 201

            proxy.cut()
            down = await send(server, auth, sid, "during", "c2")
            assert assert_error(down, 503)["errorMsg"] == "store unavailable"
            history = await server.client.get(f"/api/chat/{sid}/history", headers=auth(ALICE))
            assert_error(history, 503)
            ready = await server.client.get("/health/ready")
            assert assert_error(ready, 503)["checks"]["store"] != "up"
            assert (await server.client.get("/health/live")).status_code == 200
        server.stop.set()
    finally:
        with trio.CancelScope(shield=True):
            await store.aclose()
