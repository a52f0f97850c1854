"""The supervisor in-process (port 0) and `chatd serve` as a real subprocess."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
import trio

from chatd.auth.keys import dev_signing_key
from chatd.auth.tokens import mint_token
from chatd.config import Config, DatabaseConfig, OutboxConfig, ServerConfig
from chatd.startup import StartupError
from chatd.storage import open_store
from chatd.supervisor import build_components, build_parts, serve

READY = re.compile(r"chatd ready http=(http://\S+)")


def _config(tmp_path: Path, url: str | None = None, **server: object) -> Config:
    database = (
        DatabaseConfig(url=url, connect_timeout=1, startup_timeout=0) if url else DatabaseConfig()
    )
    options = {"bind": "127.0.0.1:0", "data_dir": tmp_path, "shutdown_grace": 2.0} | server
    return Config(server=ServerConfig(**options), database=database)  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_serve_in_process_answers_then_stops_on_cancellation(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str
) -> None:
    url = request.getfixturevalue("postgres_url") if backend == "postgres" else None
    config = _config(tmp_path, url)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            summaries = await nursery.start(
                lambda task_status: serve(config, handle_signals=False, task_status=task_status)
            )
            (base,) = [s.removeprefix("http=") for s in summaries if s.startswith("http=")]
            token = mint_token(dev_signing_key(config)[0].read_bytes(), "alice@example.com")
            async with httpx.AsyncClient(base_url=base) as client:
                ready = await client.get("/health/ready")
                assert ready.status_code == 200, ready.text
                init = await client.post(
                    "/api/chat/init",
                    json={"toEmail": "bob@example.com", "intent": "demo"},
                    headers={"Authorization": f"Bearer {token}"},
                )
                assert init.status_code == 200, init.text
                # the outbox purger runs by default (outbox.retention_hours = 24)
                scraped = (await client.get("/metrics")).text
                assert "\nchatd_outbox_purged_total 0.0\n" in scraped
            nursery.cancel_scope.cancel()
    with pytest.raises(httpx.ConnectError):  # the port is closed again
        async with httpx.AsyncClient(base_url=base) as client:
            await client.get("/health/live")


async def test_outbox_retention_zero_keeps_sent_rows_and_runs_no_purger(tmp_path: Path) -> None:
    config = replace(_config(tmp_path), outbox=OutboxConfig(retention_hours=0))
    async with open_store(config.database.url.format(data_dir=tmp_path)) as store:
        components = await build_components(config, store)
        names = [part.name for part in build_parts(components)]
        assert "outbox-purge" not in names
        default = await build_components(_config(tmp_path), store)
        assert "outbox-purge" in [part.name for part in build_parts(default)]


async def test_sigterm_drains_and_returns(tmp_path: Path) -> None:
    config = _config(tmp_path)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            done = trio.Event()

            async def run(task_status: trio.TaskStatus[list[str]]) -> None:
                await serve(config, task_status=task_status)
                done.set()

            await nursery.start(run)
            os.kill(os.getpid(), signal.SIGTERM)  # our receiver is installed before started()
            await done.wait()  # serve returned by itself, not by cancellation


async def test_unreachable_database_fails_start_up(tmp_path: Path) -> None:
    with socket_closed_port() as port:
        config = _config(tmp_path, f"postgresql://nobody@127.0.0.1:{port}/none")
        with trio.fail_after(20), pytest.raises(StartupError) as raised:
            await serve(config, handle_signals=False)
    assert raised.value.part == "database"
    assert raised.value.exit_code == 1
    assert raised.value.cause == "connection refused"


async def test_a_part_that_cannot_start_raises_its_startup_error_unwrapped(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = _config(tmp_path, bind=f"127.0.0.1:{port}")
        with trio.fail_after(20), pytest.raises(StartupError) as raised:  # not a group
            await serve(config, handle_signals=False)
    assert str(raised.value) == (
        f"cannot listen on 127.0.0.1:{port}: address already in use "
        "(is another chatd running? set --bind or CHATD_BIND)"
    )


class socket_closed_port:
    """A TCP port on 127.0.0.1 that nothing listens on (bound, never listening)."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        port: int = self.sock.getsockname()[1]
        return port

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


def _wait_ready(proc: subprocess.Popen[str], timeout: float) -> tuple[str, list[str]]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    assert proc.stderr is not None
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if match := READY.search(line):
            return match.group(1), lines
    raise AssertionError("no ready line:\n" + "".join(lines))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_cli_serve_subprocess_ready_line_and_clean_exit(tmp_path: Path, signum: int) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATD_")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "chatd",
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--data-dir",
            str(tmp_path / "data"),
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        base, _ = _wait_ready(proc, 30)
        assert httpx.get(f"{base}/health/ready", timeout=5).status_code == 200
        assert (tmp_path / "data" / "chatd.sqlite3").exists()
        # An idle keep-alive connection must not hold up the drain.
        with httpx.Client(base_url=base) as idle:
            idle.get("/health/live")
            started = time.monotonic()
            proc.send_signal(signum)
            assert proc.wait(timeout=2.0 + 5) == 0  # shutdown_grace (10 s) is the bound
            assert time.monotonic() - started < 5
        rest = proc.stderr.read() if proc.stderr else ""
        assert "Traceback" not in rest, rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


BURST = 400  # connection attempts at once: four times Hypercorn's default backlog of 100


@pytest.mark.parametrize("listener", ["http", "stomp"])
async def test_a_burst_of_connections_while_chatd_is_busy_is_queued_not_dropped(
    tmp_path: Path, listener: str
) -> None:
    """Clients coming back together after a restart all connect at once, while chatd is busy
    with the first of them. Beyond the listen backlog the kernel drops an attempt and retries
    it only a second later (then 3, 7, 15 s): with Hypercorn's default of 100, reconnects took
    up to a minute with chatd idle. Here chatd's loop is stalled while BURST clients connect;
    each connection must be established at once (queued by the kernel), none retried."""
    config = _config(tmp_path, stomp_tcp_bind="127.0.0.1:0")
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            summaries = await nursery.start(
                lambda task_status: serve(config, handle_signals=False, task_status=task_status)
            )
            (address,) = [
                s.split("://")[1].rstrip("/") for s in summaries if s.startswith(f"{listener}=")
            ]
            host, port = address.rsplit(":", 1)

            started = trio.Event()

            def burst() -> list[float]:
                trio.from_thread.run_sync(started.set)
                sockets, took = [], []
                try:
                    for _ in range(BURST):
                        sock = socket.socket()
                        sockets.append(sock)
                        sock.settimeout(10)
                        began = time.monotonic()
                        sock.connect((host, int(port)))
                        took.append(time.monotonic() - began)
                finally:
                    for sock in sockets:
                        sock.close()
                return took

            async def stall() -> None:
                await started.wait()
                time.sleep(1.5)  # noqa: ASYNC251 -- chatd's loop accepts nothing meanwhile

            nursery.start_soon(stall)
            took = await trio.to_thread.run_sync(burst)
            nursery.cancel_scope.cancel()
    assert len(took) == BURST
    assert max(took) < 0.5, f"{sum(t >= 0.5 for t in took)} attempts were dropped and retried"
