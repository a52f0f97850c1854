"""The ``chatd serve`` instances of a soak run: each on a fixed port of its own (clients find
it again after a restart), logging JSON to a file that restarts append to, killable with
SIGKILL, pausable with SIGSTOP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from soak.services import free_port

READY_TIMEOUT = 60.0


@dataclass
class Instance:
    """One ``chatd serve``: its port, its current process, its log."""

    name: str
    port: int
    env: dict[str, str]
    data_dir: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: list[float] = field(default_factory=list)  # monotonic time of each start

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the process and wait until it logs its ready line (bounded)."""
        chatd = str(Path(sys.executable).with_name("chatd"))
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    chatd,
                    "serve",
                    "--bind",
                    f"127.0.0.1:{self.port}",
                    "--data-dir",
                    str(self.data_dir),
                ],
                stdout=out,
                stderr=out,
                env=self.env,
                start_new_session=True,
            )
        self.starts.append(time.monotonic())
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            with self.log.open("rb") as f:
                f.seek(offset)
                if b"chatd ready" in f.read():
                    return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not become ready (see {self.log})")

    def kill(self) -> None:
        """SIGKILL: no drain, no goodbye to clients, leased outbox rows left behind."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()

    def pause(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, signal.SIGCONT)
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def redis_supported() -> bool:
    """Whether this chatd's config loader knows a ``[redis] url`` (the Redis tier): asked of
    ``chatd check-config`` itself, which refuses unknown sections."""
    chatd = str(Path(sys.executable).with_name("chatd"))
    with tempfile.NamedTemporaryFile("w", suffix=".toml") as f:
        f.write('[redis]\nurl = "redis://127.0.0.1:1/0"\n')
        f.flush()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHATD_")}
        done = subprocess.run(
            [chatd, "check-config", f.name], capture_output=True, env=env, check=False, timeout=60
        )
    return done.returncode == 0


def make_instances(
    workdir: Path,
    *,
    count: int,
    database_url: str,
    rabbitmq_urls: list[str],
    redis_url: str | None,
    heartbeat_ms: int,
) -> list[Instance]:
    """`count` instance definitions (not started); instance i reaches RabbitMQ through
    `rabbitmq_urls[i]` (a proxy for the one the cut-off fault isolates)."""
    from chatd.auth.keys import ensure_dev_keys

    data_dir = workdir / "chatd-data"
    data_dir.mkdir(parents=True, exist_ok=True)
    ensure_dev_keys(data_dir)  # one key pair for every instance and the token minting
    base = {k: v for k, v in os.environ.items() if not k.startswith("CHATD_")}
    base |= {
        "CHATD_DATABASE_URL": database_url,
        "CHATD_LOG_FORMAT": "json",
        "CHATD_LOGGING__LEVEL": "INFO",
        "CHATD_LOGGING__ACCESS_LOG": "false",  # thousands of polls a minute: noise, CPU
        # clients ask for beats every heartbeat_ms; the server's fastest allowed
        "CHATD_SERVER__HEARTBEAT_SEND_MS": str(min(heartbeat_ms, 1000)),
        "CHATD_SERVER__HEARTBEAT_RECEIVE_MS": str(min(heartbeat_ms, 1000)),
        # a restarted RabbitMQ or a mended proxy is found again within 5 s, not 30
        "CHATD_RABBITMQ__RECONNECT_MAX_SECONDS": "5",
        "CHATD_SERVER__SHUTDOWN_GRACE": "5",
    }
    if redis_url is not None:
        base["CHATD_REDIS_URL"] = redis_url
    out = []
    for i in range(count):
        env = base | {"CHATD_RABBITMQ_URL": rabbitmq_urls[i]}
        out.append(
            Instance(f"chatd-{i + 1}", free_port(), env, data_dir, workdir / f"chatd-{i + 1}.log")
        )
    return out


def error_lines(log: Path) -> list[tuple[float, str]]:
    """(unix time, text) of every ERROR/CRITICAL line of a JSON log (and of any line that is
    not JSON, e.g. a crash's traceback: it cannot be dated, so it is dated 0)."""
    from datetime import datetime

    out: list[tuple[float, str]] = []
    if not log.exists():
        return out
    for raw in log.read_text(errors="replace").splitlines():
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except ValueError:
            out.append((0.0, raw[:300]))
            continue
        if line.get("level") in ("ERROR", "CRITICAL"):
            when = datetime.fromisoformat(line["time"].replace("Z", "+00:00")).timestamp()
            out.append((when, f"{line.get('logger')}: {line.get('event')}"[:300]))
    return out
