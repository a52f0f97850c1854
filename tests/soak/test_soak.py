"""The soak's 2-minute form (issue 22), what CI runs of `scripts/soak`: 300 clients (150
pairs: on a 2-core CI machine the generator, two chatd instances, PostgreSQL and RabbitMQ
share the cores, and 300 keep each part well under a core, see docs/operations.md "Soak"),
100 msg/s, every fault once (one every 13 s, Redis held 8 s, the RabbitMQ link cut 8 s, an
instance stopped 8 s). The run prints its table; any failed check fails the test."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import unavailable

pytestmark = [pytest.mark.slow, pytest.mark.soak, pytest.mark.timeout(420)]

ROOT = Path(__file__).resolve().parents[2]
CI_FORM = [
    "--minutes",
    "2",
    "--clients",
    "300",
    "--rate",
    "100",
    "--fault-every",
    "13",
    "--hold",
    "8",
    "--pause",
    "8",
    "--warmup",
    "30",
]


def test_two_minute_soak_passes(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        unavailable("the soak's private PostgreSQL and RabbitMQ need root (su postgres)")
    for tool in ("rabbitmq-server", "su"):
        if shutil.which(tool) is None:
            unavailable(f"{tool} not found: the soak starts private services")
    done = subprocess.run(
        [sys.executable, "-m", "soak", *CI_FORM, "--workdir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    print(done.stdout[-6000:])
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert (tmp_path / "table.md").read_text().count("| FAIL ") == 0
