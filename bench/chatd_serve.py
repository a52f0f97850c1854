"""``chatd serve`` on a PostgreSQL database created for one benchmark and dropped after it.

Shared by the send benchmark (issue 3) and the end-to-end benchmark (issue 4). Each instance is
a real ``chatd serve`` process pinned to the broker core, bound to a free port, with the rate
limits lifted (a benchmark offers more than one user's fair share on purpose). With
`rabbitmq_url` several instances share the database and relay through RabbitMQ; with
``CHATD_BENCH_REDIS_URL`` set they use the Redis tier there (a fresh key prefix each).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.targets import BROKER_CORE, pinned, start_process, stop_process

PG_ADMIN_URL = os.environ.get(
    "CHATD_BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
POOL_SIZE = 10
#: Set (by ``python -m bench --redis URL``) to run every chatd with the Redis tier.
BENCH_REDIS_URL = "CHATD_BENCH_REDIS_URL"
_READY = re.compile(r"chatd ready .*?\bhttp=http://([\d.]+):(\d+)")


@dataclass(frozen=True)
class Instance:
    """One running ``chatd serve``: where its HTTP port is, and its pid for CPU figures."""

    host: str
    port: int
    pid: int


@dataclass(frozen=True)
class Deployment:
    """The instances of one benchmark, their database and the dev key directory."""

    instances: list[Instance]
    database_url: str
    data_dir: Path


def admin(sql: str) -> None:
    """Run `sql` as the PostgreSQL superuser (database create/drop)."""
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(sql.encode())


def database_url(name: str) -> str:
    return f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"


@contextmanager
def fresh_database(prefix: str = "chatd_bench") -> Iterator[str]:
    """A new, empty database's URL; dropped (connections and all) on exit."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin(f'CREATE DATABASE "{name}"')
    try:
        yield database_url(name)
    finally:
        admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def chatd_deployment(
    workdir: Path,
    *,
    instances: int = 1,
    rabbitmq_url: str | None = None,
    env: dict[str, str] | None = None,
    workers: int = 1,
    say: Callable[[str], None] = print,
) -> Iterator[Deployment]:
    """`instances` ``chatd serve`` processes on one fresh database; stopped on exit.

    With `workers` > 1, one ``chatd serve --workers N`` on a fixed port, not pinned (its
    workers use every core, the generator's too); each worker is an `Instance` (same port,
    its own pid, for the CPU figures)."""
    from chatd.auth.keys import ensure_dev_keys

    if instances > 1 and rabbitmq_url is None:
        raise ValueError("several instances need RabbitMQ to relay between them")
    data_dir = workdir / "chatd-data"
    data_dir.mkdir(parents=True, exist_ok=True)
    ensure_dev_keys(data_dir)  # before the processes start, so they all share one key
    with fresh_database() as url, ExitStack() as stack:
        base = {
            **os.environ,
            "CHATD_DATABASE_URL": url,
            "CHATD_DATABASE__POOL_SIZE": str(POOL_SIZE),
            "CHATD_LIMITS__SEND_BURST": "1000000",
            "CHATD_LIMITS__SENDS_PER_SECOND": "1000000",
            "CHATD_LIMITS__IDENTICAL_CONTENT": "1000000",
            "CHATD_LOGGING__LEVEL": "INFO",  # the ready line is logged at INFO
            # the generator opens its keep-alive connections before a slow set-up phase
            # (sessions, CPU probe): the default 5 s idle reap closed them under load
            "CHATD_SERVER__KEEPALIVE_TIMEOUT": "300",
            **(env or {}),
        }
        base.pop("CHATD_CONFIG", None)
        base.pop("CHATD_RABBITMQ_URL", None)
        base.pop("CHATD_REDIS_URL", None)
        if redis := os.environ.get(BENCH_REDIS_URL):  # `python -m bench --redis URL`
            base["CHATD_REDIS_URL"] = redis
            base["CHATD_REDIS__KEY_PREFIX"] = f"chatd_bench_{uuid.uuid4().hex[:10]}:"
        if rabbitmq_url is not None:
            base["CHATD_RABBITMQ_URL"] = rabbitmq_url
        chatd = str(Path(sys.executable).with_name("chatd"))
        running: list[Instance] = []
        if workers > 1:
            port = _free_port()
            base["CHATD_SERVER__SOCKJS_ENABLED"] = "false"
            cmd = [
                chatd,
                "serve",
                "--workers",
                str(workers),
                "--bind",
                f"127.0.0.1:{port}",
                "--data-dir",
                str(data_dir),
            ]
            say(f"  starting chatd serve --workers {workers} on {url.rsplit('/', 1)[1]}")
            log = workdir / "chatd-serve-workers.log"
            proc, _ = start_process(
                cmd, log, re.compile("(?s)" + ".*".join([_READY.pattern] * workers)), env=base
            )
            stack.callback(stop_process, proc)
            pids = sorted(
                int(p)
                for p in subprocess.run(
                    ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True
                ).stdout.split()
            )
            yield Deployment([Instance("127.0.0.1", port, pid) for pid in pids], url, data_dir)
            return
        for i in range(instances):
            cmd = pinned(
                [chatd, "serve", "--bind", "127.0.0.1:0", "--data-dir", str(data_dir)], BROKER_CORE
            )
            say(f"  starting chatd serve #{i + 1} on {url.rsplit('/', 1)[1]}")
            proc, match = start_process(cmd, workdir / f"chatd-serve-{i + 1}.log", _READY, env=base)
            stack.callback(stop_process, proc)
            running.append(Instance(match.group(1), int(match.group(2)), proc.pid))
        yield Deployment(running, url, data_dir)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def fresh_vhost(prefix: str = "chatd_bench") -> Iterator[str]:
    """A new RabbitMQ vhost (guest has every right on it); its AMQP URL, deleted on exit."""
    import subprocess

    vhost = f"{prefix}_{uuid.uuid4().hex[:10]}"
    subprocess.run(["rabbitmqctl", "add_vhost", vhost], check=True, capture_output=True)
    try:
        subprocess.run(
            ["rabbitmqctl", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
            check=True,
            capture_output=True,
        )
        yield f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    finally:
        subprocess.run(["rabbitmqctl", "delete_vhost", vhost], capture_output=True, check=False)


def tokens_for(data_dir: Path, emails: list[str], ttl: int = 3600) -> list[str]:
    """Dev-key tokens for `emails` (the key every instance of the deployment trusts)."""
    from chatd.auth.keys import ensure_dev_keys, load_private_key
    from chatd.auth.tokens import mint_token

    private_path, _, _ = ensure_dev_keys(data_dir)
    key = load_private_key(private_path)
    return [mint_token(key, email, ttl) for email in emails]
