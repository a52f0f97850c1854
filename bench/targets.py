"""The brokers under test: chatd's `python -m stomp` (started here, pinned to core 0) and
RabbitMQ's STOMP and Web-STOMP plugins (a service we do not own: never pinned, never stopped).

Also the /proc readers the driver uses for CPU time and resident memory of any process.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.wire import Endpoint

BROKER_CORE = 0
GENERATOR_CORE = 1
_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")
_READY = re.compile(r"stomp broker ready tcp=([\d.]+):(\d+) ws=ws://([\d.]+):(\d+)(/\S*)")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def rss_bytes(pid: int) -> int:
    """Resident set size of process `pid`."""
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE


def system_busy() -> float:
    """CPU seconds all cores spent busy since boot (user, nice, system, irq, softirq, steal)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
    return (user + nice + system + irq + softirq + steal) / _TICK


def self_cpu() -> float:
    """CPU seconds of this (generator) process, children excluded."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def pin_self(core: int = GENERATOR_CORE) -> bool:
    """Pin this process to `core`; False when the machine has no such core."""
    if core >= (os.cpu_count() or 1):
        return False
    os.sched_setaffinity(0, {core})
    return True


def raise_fd_limit() -> int:
    """Raise this process's open-file soft limit to its hard limit; return the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@dataclass
class Target:
    """A broker under test: its name, the pid whose CPU and memory we read, its endpoints."""

    name: str
    pid: int
    tcp: Endpoint
    ws: Endpoint
    pinned: bool
    notes: list[str] = field(default_factory=list)

    def endpoint(self, transport: str) -> Endpoint:
        return self.tcp if transport == "tcp" else self.ws


class ChatdBroker:
    """`taskset -c 0 python -m stomp` on free ports; a context manager (SIGTERM on exit)."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Target:
        cmd = [
            sys.executable,
            "-m",
            "stomp",
            "--tcp",
            "127.0.0.1:0",
            "--ws",
            "127.0.0.1:0",
            "--heartbeat",
            "0,0",
            "--log-level",
            "INFO",
        ]
        cmd = pinned(cmd, BROKER_CORE)
        self.proc, match = start_process(cmd, self.log_path, _READY)
        host, port, ws_host, ws_port, path = match.groups()
        return Target(
            "chatd",
            self.proc.pid,
            Endpoint(host, int(port)),
            Endpoint(ws_host, int(ws_port), path),
            cmd[0] == "taskset",
        )

    def __exit__(self, *exc: object) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_process(proc)


def pinned(cmd: list[str], core: int) -> list[str]:
    """`cmd` under `taskset -c core` when the machine has that core and taskset."""
    if shutil.which("taskset") is None or core >= (os.cpu_count() or 1):
        return cmd
    return ["taskset", "-c", str(core), *cmd]


def start_process(
    cmd: list[str],
    log_path: Path,
    ready: re.Pattern[str],
    *,
    env: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> tuple[subprocess.Popen[bytes], re.Match[str]]:
    """Start `cmd` with its output in `log_path`; wait for a line matching `ready`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=env, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = ready.search(log_path.read_text(errors="replace"))
        if match:
            return proc, match
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    stop_process(proc)
    raise RuntimeError(f"{' '.join(cmd[:6])} ... did not become ready (see {log_path})")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM, then SIGKILL after `timeout` seconds."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _beam_pid() -> int | None:
    """The RabbitMQ node's Erlang VM (beam.smp), found by reading /proc."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() == "beam.smp":
                cmdline = (entry / "cmdline").read_bytes()
                if b"rabbit" in cmdline:
                    return int(entry.name)
        except OSError:
            continue
    return None


def rabbitmq(say: object = print) -> tuple[Target | None, str]:
    """RabbitMQ's STOMP (61613) and Web-STOMP (15674, /ws) as a target, enabling the plugins
    when needed; (None, reason) when that cannot be done."""
    if not _port_open(5672):
        return None, "RabbitMQ is not running"
    if not (_port_open(61613) and _port_open(15674)):
        tool = shutil.which("rabbitmq-plugins")
        if tool is None:
            return None, "rabbitmq-plugins not found"
        if callable(say):
            say("enabling rabbitmq_stomp and rabbitmq_web_stomp")
        result = subprocess.run(
            [tool, "enable", "rabbitmq_stomp", "rabbitmq_web_stomp"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            return None, f"rabbitmq-plugins enable failed: {result.stderr.strip()[:200]}"
        deadline = time.monotonic() + 60
        while not (_port_open(61613) and _port_open(15674)):
            if time.monotonic() > deadline:
                return None, "STOMP plugins enabled but ports 61613/15674 did not open"
            time.sleep(0.5)
    pid = _beam_pid()
    if pid is None:
        return None, "cannot find RabbitMQ's beam.smp process"
    target = Target(
        "rabbitmq",
        pid,
        Endpoint("127.0.0.1", 61613),
        Endpoint("127.0.0.1", 15674, "/ws"),
        pinned=False,
    )
    target.notes.append("RabbitMQ runs as a system service: not pinned, it may use every core")
    return target, ""
