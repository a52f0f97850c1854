"""Fixtures for the STOMP conformance suite: the broker as a real process, `python -m stomp`.

The broker runs exactly as an operator runs it and logs one ready line on stderr:
`stomp broker ready tcp=HOST:PORT ws=ws://HOST:PORT/ws`. Every client under test — stomp.py,
@stomp/stompjs, raw sockets — talks to it over real sockets, so nothing here knows the broker's
internals.
"""

from __future__ import annotations

import itertools
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 20.0
EXIT_TIMEOUT = 15.0
# Searched for, not matched: the broker's log format may put a timestamp and level before it.
READY_LINE = re.compile(
    r"stomp broker ready tcp=(?P<host>[^\s:]+):(?P<port>\d+) ws=(?P<ws>ws://\S+)$"
)
#: Server heart-beat (send, receive) of the broker the heart-beat tests use, in ms.
FAST_HEARTBEAT = (500, 500)

_counter = itertools.count()


@dataclass
class BrokerProcess:
    """A running `python -m stomp`; `stderr` collects its log lines for failure messages."""

    process: subprocess.Popen[str]
    host: str
    port: int
    ws_url: str
    args: tuple[str, ...]
    stderr: list[str] = field(default_factory=list)

    @property
    def tcp(self) -> tuple[str, int]:
        return (self.host, self.port)

    def log(self) -> str:
        return "".join(self.stderr[-200:])


def _pump(stream: object, lines: queue.Queue[str | None], sink: list[str]) -> None:
    # Drain stderr for the whole life of the process: a full pipe would stall the broker.
    for line in stream:  # type: ignore[attr-defined]
        sink.append(line)
        lines.put(line)
    lines.put(None)


def start_broker(*extra: str) -> BrokerProcess:
    """Start `python -m stomp` on ephemeral ports and wait for its ready line."""
    args = ("--tcp", "127.0.0.1:0", "--ws", "127.0.0.1:0", *extra)
    env = dict(os.environ)
    # `stomp` is also the top-level name of the stomp.py client installed for these tests, and the
    # editable finder of our package loses to a real directory in site-packages. Run from the
    # repository root with it first on the path so that `-m stomp` is ours, never stomp.py's CLI.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    process = subprocess.Popen(
        [sys.executable, "-m", "stomp", *args],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        errors="replace",
    )
    lines: queue.Queue[str | None] = queue.Queue()
    sink: list[str] = []
    threading.Thread(target=_pump, args=(process.stderr, lines, sink), daemon=True).start()
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            _stop(process)
            pytest.fail(
                f"no ready line from python -m stomp within {READY_TIMEOUT}s:\n{''.join(sink)}"
            )
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty:
            continue
        if line is None:
            process.wait(timeout=EXIT_TIMEOUT)
            pytest.fail(
                f"python -m stomp exited ({process.returncode}) before ready:\n{''.join(sink)}"
            )
        match = READY_LINE.search(line.strip())
        if match:
            return BrokerProcess(
                process, match["host"], int(match["port"]), match["ws"], args, sink
            )


def _stop(process: subprocess.Popen[str]) -> int | None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=EXIT_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return None


def stop_broker(broker: BrokerProcess) -> None:
    """SIGTERM the broker and assert that it exits, promptly and cleanly."""
    code = _stop(broker.process)
    assert code is not None, f"python -m stomp did not exit within {EXIT_TIMEOUT}s of SIGTERM"
    # `python -m stomp` documents a graceful shutdown on SIGTERM that exits 0.
    assert code == 0, f"python -m stomp exited with {code} after SIGTERM:\n{broker.log()}"


@pytest.fixture(scope="session")
def broker() -> Iterator[BrokerProcess]:
    """The broker with its default settings (heart-beat limit 1000,1000)."""
    running = start_broker()
    try:
        yield running
    finally:
        stop_broker(running)


@pytest.fixture(scope="session")
def fast_heartbeat_broker() -> Iterator[BrokerProcess]:
    """A second broker whose server heart-beat is FAST_HEARTBEAT, for the heart-beat tests."""
    running = start_broker("--heartbeat", "{},{}".format(*FAST_HEARTBEAT))
    try:
        yield running
    finally:
        stop_broker(running)


@pytest.fixture
def unique() -> str:
    """A fresh name part, so that no two tests (or runs) share a destination."""
    return f"{uuid.uuid4().hex[:8]}-{next(_counter)}"
