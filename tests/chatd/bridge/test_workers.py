"""``chatd serve --workers N``: N processes on one port, relaying through RabbitMQ.

The kernel spreads connections over the workers (SO_REUSEPORT), so clients of one pair end up
on different processes; every message must still reach every subscriber. A worker killed with
SIGKILL is started again; SIGTERM to the parent stops them all cleanly. Combinations that
cannot work are refused with one line and exit 2.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from .conftest import ALICE, BOB, Cluster, Instance, _spawn, eventually, recorder
from .services import free_port

CHATD = str(Path(sys.executable).with_name("chatd"))


def _listeners(port: int) -> set[int]:
    """Pids of the processes holding established connections on `port` (server side)."""
    out = subprocess.run(
        ["ss", "-Htnp", "state", "established", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {int(pid) for pid in re.findall(r"pid=(\d+)", out)}


def _children(pid: int) -> set[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


async def test_two_workers_share_a_port_and_deliver_across_processes(
    cluster: Cluster,
    tmp_path: Path,
) -> None:
    port = free_port()
    env = {**cluster.env, "CHATD_SERVER__SOCKJS_ENABLED": "false"}
    log = tmp_path / "workers.log"
    parent = _spawn(
        [
            CHATD,
            "serve",
            "--workers",
            "2",
            "--bind",
            f"127.0.0.1:{port}",
            "--data-dir",
            env["DATA_DIR"],
        ],
        env,
        log,
    )
    inst = Instance("workers", env, tmp_path, parent, f"http://127.0.0.1:{port}")
    try:
        await eventually(lambda: log.read_text().count("chatd ready") == 2, seconds=30)
        workers = _children(parent.pid)
        assert len(workers) == 2

        async with trio.open_nursery() as nursery:
            sid = await cluster.init(inst)
            # many connections: the kernel spreads them over both workers
            listeners = [
                await recorder(nursery, cluster, inst, (ALICE, BOB)[i % 2]) for i in range(12)
            ]
            for i, rec in enumerate(listeners):
                await rec.subscribe(f"/topic/session.{sid}", f"t{i}")
            assert _listeners(port) == workers, "both workers hold subscribers"
            for n in range(10):
                answer = await cluster.send(inst, sid, f"hello {n}", f"w-{n}")
                assert answer.status_code == 201, answer.text
            for i, rec in enumerate(listeners):
                await rec.wait(lambda r=rec, i=i: len(r.frames.get(f"t{i}", [])) >= 10)
                seqs = [int(b["seq"]) for b in rec.bodies(f"t{i}")]
                assert seqs == list(range(1, 11)), seqs  # each once, in order
            nursery.cancel_scope.cancel()

        # a worker killed outright is started again, and serves
        victim = sorted(workers)[0]
        os.kill(victim, signal.SIGKILL)
        await eventually(lambda: log.read_text().count("chatd ready") == 3, seconds=30)
        assert victim not in _children(parent.pid)
        assert len(_children(parent.pid)) == 2
        answer = await cluster.send(inst, sid, "after", "w-after")
        assert answer.status_code == 201

        parent.send_signal(signal.SIGTERM)
        assert parent.wait(20) == 0
        assert not _children(parent.pid)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


@pytest.mark.parametrize(
    ("env", "why"),
    [
        ({"CHATD_RABBITMQ_URL": ""}, r"no RabbitMQ is configured"),
        ({"CHATD_SERVER__SOCKJS_ENABLED": "true"}, r"SockJS's HTTP transports"),
        ({"CHATD_DATABASE_URL": ""}, r"SQLite is one process's store"),
    ],
)
async def test_combinations_that_cannot_work_are_refused_in_one_line(
    cluster: Cluster,
    env: dict[str, str],
    why: str,
) -> None:
    merged = {
        **cluster.env,
        "CHATD_SERVER__SOCKJS_ENABLED": "false",
        "CHATD_LOG_FORMAT": "text",
        **env,
    }
    for key in [k for k, v in merged.items() if v == ""]:
        del merged[key]  # unset: the embedded default (no RabbitMQ, SQLite)
        if key == "CHATD_RABBITMQ_URL":  # and the tuning that only goes with a URL
            for other in [k for k in merged if k.startswith("CHATD_RABBITMQ__")]:
                del merged[other]
    with trio.fail_after(30):
        done = await trio.run_process(
            [
                CHATD,
                "serve",
                "--workers",
                "2",
                "--bind",
                "127.0.0.1:8089",
                "--data-dir",
                merged["DATA_DIR"],
            ],
            env=merged,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    stderr = done.stderr.decode()
    assert done.returncode == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert re.match(r"chatd: cannot run 2 workers: .*" + why, lines[0]), lines[0]
    assert "Traceback" not in stderr
