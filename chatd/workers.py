"""`chatd serve --workers N`: N instance processes on one port, to use every core of a host.

A chatd process runs one trio thread, so one core is what it can use. Each worker is a whole
`chatd serve` (the same command line, without ``--workers``) whose listener sets
SO_REUSEPORT (``[server] reuse_port``): the kernel spreads new connections over the workers,
and they reach each other's clients through RabbitMQ exactly as separate instances behind a
load balancer do. This process only starts them, forwards SIGTERM/SIGINT, starts again one
that died, and exits once all have stopped (0 after a clean stop).

What it refuses, with one line and exit 2 (`check_workers`): no RabbitMQ (a worker could not
deliver to clients of another), SQLite (one process's store), SockJS on (its HTTP transports
keep a session in one process, but a session's requests arrive on several connections, which
the kernel may give to different workers: run one process per port behind a load balancer
that sticks on the session path instead, see docs/operations.md), port 0 (every worker would
bind a port of its own) and the raw STOMP TCP listener (not shared yet).
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from types import FrameType
from typing import Final

from chatd.config import Config
from chatd.startup import EXIT_CONFIG, StartupError

log = logging.getLogger("chatd.workers")

#: Seconds between looks at the workers.
POLL: Final = 0.2
#: A worker that dies is started again after this many seconds...
RESTART_DELAY: Final = 1.0
#: ...unless this many died within `CRASH_WINDOW` seconds: then the whole server stops.
MAX_CRASHES: Final = 5
CRASH_WINDOW: Final = 60.0
WORKER_ENV: Final = "CHATD_WORKER"


def check_workers(config: Config, workers: int) -> None:
    """Raise `StartupError` (exit 2) when `workers` processes cannot serve `config`."""
    if workers <= 1:
        return

    def refuse(cause: str, hint: str) -> StartupError:
        return StartupError(
            "workers", "cannot run", f"{workers} workers", cause, hint, exit_code=EXIT_CONFIG
        )

    if config.rabbitmq is None:
        raise refuse(
            "no RabbitMQ is configured, and workers reach each other's clients through it",
            "set [rabbitmq] url or CHATD_RABBITMQ_URL, or use --workers 1",
        )
    if config.database.url.startswith("sqlite"):
        raise refuse("SQLite is one process's store", "use PostgreSQL (CHATD_DATABASE_URL)")
    if config.server.sockjs_enabled:
        raise refuse(
            "SockJS's HTTP transports keep a session in one process, and its "
            "requests may reach any worker",
            "set [server] sockjs_enabled = false "
            "(WebSocket clients are unaffected), or run one process per port behind "
            "a load balancer that sticks on the SockJS session path",
        )
    if config.server.bind_address[1] == 0:
        raise refuse(
            "port 0 would give every worker a port of its own",
            "set a fixed port with --bind or CHATD_BIND",
        )
    if config.server.stomp_tcp_bind is not None:
        raise refuse(
            "the raw STOMP TCP listener cannot be shared by workers yet",
            "remove [server] stomp_tcp_bind, or run one process per port",
        )


def worker_command(argv: Sequence[str]) -> list[str]:
    """The command line of one worker: this `chatd serve` without ``--workers``."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--workers":
            skip = True
        elif not arg.startswith("--workers="):
            out.append(arg)
    return [sys.executable, "-m", "chatd", *out]


def run_workers(argv: Sequence[str], workers: int, env: Mapping[str, str], grace: float) -> int:
    """Run `workers` copies of ``chatd serve`` until SIGTERM/SIGINT; the exit status.

    `argv` is this process's arguments after ``chatd``; `grace` how long workers get to stop
    before they are killed. A worker that exits with a configuration error (2) stops all.
    """
    command = worker_command(argv)
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}

    def start(index: int) -> subprocess.Popen[bytes]:
        worker_env = {**env, WORKER_ENV: str(index), "CHATD_SERVER__REUSE_PORT": "true"}
        return subprocess.Popen(command, env=worker_env)

    procs = [start(i) for i in range(workers)]
    log.info("started %d workers: %s", workers, " ".join(str(p.pid) for p in procs))
    crashes: list[float] = []
    status = 0
    try:
        while not stopping:
            time.sleep(POLL)
            for index, proc in enumerate(procs):
                code = proc.poll()
                if code is None or stopping:
                    continue
                if code == EXIT_CONFIG:
                    log.error(
                        "worker %d (pid %d) refused its configuration: stopping", index, proc.pid
                    )
                    status, stopping = EXIT_CONFIG, True
                    break
                now = time.monotonic()
                crashes = [t for t in crashes if now - t < CRASH_WINDOW] + [now]
                if len(crashes) > MAX_CRASHES:
                    log.error("%d workers died within %.0f s: stopping", len(crashes), CRASH_WINDOW)
                    status, stopping = 1, True
                    break
                log.warning(
                    "worker %d (pid %d) exited with %d; starting it again in %.0f s",
                    index,
                    proc.pid,
                    code,
                    RESTART_DELAY,
                )
                time.sleep(RESTART_DELAY)
                procs[index] = start(index)
    finally:
        _stop_all(procs, grace)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    codes = [p.returncode for p in procs]
    log.info("workers stopped: exit codes %s", codes)
    if status:
        return status
    return 0 if all(c in (0, -signal.SIGTERM) for c in codes) else 1


def _stop_all(procs: list[subprocess.Popen[bytes]], grace: float) -> None:
    """SIGTERM every worker still running, wait up to `grace` (+5 s), then SIGKILL."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace + 5
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.error("worker pid %d did not stop within %.0f s: killing it", proc.pid, grace + 5)
            proc.kill()
            proc.wait()
