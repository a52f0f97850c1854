"""``/health/live`` and ``/health/ready`` of the whole server (`supervisor.serve`): through a
store outage and back, a schema the code does not match, and the shutdown drain."""

from __future__ import annotations

import os
import signal
import sqlite3
from pathlib import Path

import httpx
import pytest
import trio

from chatd.config import Config, DatabaseConfig, ServerConfig
from chatd.supervisor import serve

from .conftest import SwitchableProxy

pytestmark = pytest.mark.timeout(60)


def _config(tmp_path: Path, url: str | None = None, **server: object) -> Config:
    database = (
        DatabaseConfig(url=url, connect_timeout=1, pool_timeout=1) if url else DatabaseConfig()
    )
    options = {"bind": "127.0.0.1:0", "data_dir": tmp_path, "shutdown_grace": 2.0} | server
    return Config(server=ServerConfig(**options), database=database)  # type: ignore[arg-type]


async def _serve(nursery: trio.Nursery, config: Config, *, signals: bool = False) -> str:
    summaries = await nursery.start(
        lambda task_status: serve(config, handle_signals=signals, task_status=task_status)
    )
    (base,) = [s.removeprefix("http=") for s in summaries if s.startswith("http=")]
    return str(base)


async def _ready(client: httpx.AsyncClient) -> tuple[int, dict[str, str]]:
    answer = await client.get("/health/ready")
    checks: dict[str, str] = answer.json()["checks"]
    return answer.status_code, checks


async def _until_ready(client: httpx.AsyncClient, status: int) -> dict[str, str]:
    with trio.move_on_after(15):
        while True:
            code, checks = await _ready(client)
            if code == status:
                return checks
            await trio.sleep(0.1)
    raise AssertionError(f"/health/ready never answered {status}: {checks}")


async def test_ready_names_every_check(nursery: trio.Nursery, tmp_path: Path) -> None:
    base = await _serve(nursery, _config(tmp_path))
    async with httpx.AsyncClient(base_url=base) as client:
        live = await client.get("/health/live")
        assert (live.status_code, live.json()["status"]) == (200, "up")
        assert await _ready(client) == (200, {"store": "up", "migrations": "up"})
    nursery.cancel_scope.cancel()


async def test_ready_through_a_store_outage_and_back(
    nursery: trio.Nursery, tmp_path: Path, proxied_pg: tuple[str, SwitchableProxy]
) -> None:
    url, proxy = proxied_pg
    base = await _serve(nursery, _config(tmp_path, url))
    async with httpx.AsyncClient(base_url=base, timeout=20) as client:
        assert (await _ready(client))[0] == 200
        assert "chatd_ready 1.0" in (await client.get("/metrics")).text
        proxy.switch(False)
        checks = await _until_ready(client, 503)
        assert checks["store"] != "up"
        # Liveness is about this process, not its dependencies: a restart would not help.
        assert (await client.get("/health/live")).status_code == 200
        metrics = await client.get("/metrics")  # scrapes keep working during the outage
        assert metrics.status_code == 200
        assert "chatd_db_pool_in_use" in metrics.text
        assert "chatd_ready 0.0" in metrics.text  # the latest probe failed
        proxy.switch(True)
        assert await _until_ready(client, 200) == {"store": "up", "migrations": "up"}
    nursery.cancel_scope.cancel()


async def test_a_schema_the_code_does_not_know_is_not_ready(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    base = await _serve(nursery, _config(tmp_path))
    db = sqlite3.connect(tmp_path / "chatd.sqlite3", isolation_level=None)
    try:
        async with httpx.AsyncClient(base_url=base) as client:
            assert (await _ready(client))[0] == 200
            # What a newer release's `chatd migrate` leaves behind.
            db.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) "
                "VALUES (9999, '9999_from_the_future', 0)"
            )
            code, checks = await _ready(client)
            assert code == 503
            assert "9999" in checks["migrations"]
            assert checks["store"] == "up"
            db.execute("DELETE FROM schema_migrations WHERE version = 9999")
            assert (await _ready(client))[0] == 200
    finally:
        db.close()
    nursery.cancel_scope.cancel()


async def test_ready_turns_false_for_the_drain_delay_before_the_listener_closes(
    tmp_path: Path,
) -> None:
    config = _config(tmp_path, drain_delay=1.0)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            done = trio.Event()

            async def run(task_status: trio.TaskStatus[list[str]]) -> None:
                await serve(config, task_status=task_status)
                done.set()

            summaries = await nursery.start(run)
            base = summaries[0].removeprefix("http=")
            async with httpx.AsyncClient(base_url=base) as client:
                assert (await _ready(client))[0] == 200
                os.kill(os.getpid(), signal.SIGTERM)
                checks = await _until_ready(client, 503)
                assert checks["supervisor"] == "draining"
                # Still serving during the delay: the load balancer's last requests succeed.
                assert (await client.get("/health/live")).status_code == 200
                assert not done.is_set()
            await done.wait()
