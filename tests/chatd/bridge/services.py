"""Private RabbitMQ and PostgreSQL instances that fault tests may stop and start freely.

The shared services on this machine serve other test runs: a test that breaks a service
breaks its own copy. Each copy lives in a temporary directory on free ports and is stopped
(and removed) by its fixture.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

PG_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"))), Path("/usr/bin"))
START_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_port(port: int, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on port {port} after {timeout} s")


def service_root() -> Path:
    """A fresh directory the service users can reach (pytest's tmp_path is root-only)."""
    root = Path(tempfile.mkdtemp(prefix="chatd-fault-"))
    root.chmod(0o755)
    return root


def _chown(path: Path, user: str) -> None:
    shutil.chown(path, user, user)
    for child in path.rglob("*"):
        shutil.chown(child, user, user)


@dataclass
class PrivateRabbit:
    """A RabbitMQ node of our own (shares the Erlang cookie; no plugins)."""

    root: Path
    node: str
    port: int
    dist_port: int

    @classmethod
    def create(cls, root: Path) -> PrivateRabbit:
        for sub in ("mnesia", "log"):
            (root / sub).mkdir(parents=True)
        (root / "rabbitmq.conf").write_text("loopback_users = none\n")
        (root / "enabled_plugins").write_text("[].\n")
        _chown(root, "rabbitmq")
        return cls(root, f"chatdfault{uuid.uuid4().hex[:8]}@localhost", free_port(), free_port())

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    def _env(self) -> dict[str, str]:
        r = self.root
        return {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(r / "mnesia"),
            "RABBITMQ_LOG_BASE": str(r / "log"),
            "RABBITMQ_PID_FILE": str(r / "pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(r / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(r / "rabbitmq.conf"),
        }

    def start(self) -> None:
        subprocess.run(
            ["rabbitmq-server", "-detached"],
            env=self._env(),
            check=True,
            capture_output=True,
            timeout=60,
        )
        _wait_port(self.port)

    def stop(self) -> None:
        subprocess.run(
            ["rabbitmqctl", "-n", self.node, "stop"],
            env=self._env(),
            capture_output=True,
            timeout=60,
            check=False,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            except OSError:
                return
            time.sleep(0.1)

    def ctl(self, *args: str) -> str:
        return subprocess.run(
            ["rabbitmqctl", "-n", self.node, *args],
            env=self._env(),
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout


@dataclass
class PrivatePostgres:
    """A PostgreSQL cluster of our own, run as the postgres user (initdb refuses root)."""

    root: Path
    port: int

    @classmethod
    def create(cls, root: Path, *, password: str | None = None) -> PrivatePostgres:
        """With `password`, TCP logins need it (SCRAM); the local socket stays trusted."""
        root.mkdir(parents=True)
        _chown(root, "postgres")
        pg = cls(root, free_port())
        auth = ["-A", "trust"]
        if password is not None:
            pwfile = root / "pwfile"
            pwfile.write_text(password + "\n")
            shutil.chown(pwfile, "postgres", "postgres")
            auth = ["--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}"]
        pg._as_postgres(
            str(PG_BIN / "initdb"), "-D", str(root / "data"), *auth, "-U", "postgres", "--no-sync"
        )
        return pg

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, *cmd: str) -> None:
        subprocess.run(
            ["su", "postgres", "-s", "/bin/sh", "-c", " ".join(f"'{c}'" for c in cmd)],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._as_postgres(
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(self.root / "data"),
            "-o",
            options,
            "-l",
            str(self.root / "log"),
            "-w",
            "start",
        )
        _wait_port(self.port)

    def stop(self) -> None:
        self._as_postgres(
            str(PG_BIN / "pg_ctl"), "-D", str(self.root / "data"), "-m", "fast", "-w", "stop"
        )
