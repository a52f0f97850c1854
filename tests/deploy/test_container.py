"""The image, built and run here (podman; scripts/container-image builds it offline): `chatd
migrate` from the image prepares a fresh PostgreSQL database, two `chatd serve` containers on
it and a fresh RabbitMQ vhost (one on a read-only root filesystem) relay a message from one's
REST API to the other's `/ws`, run as the image's non-root user, pass the image's HEALTHCHECK,
and stop on SIGTERM within the compose grace period with the WebSocket closed 1001. The image
holds no keys, tests, compilers or caches.

Where podman cannot work these tests skip, and fail under CI=true (`unavailable`).
"""

from __future__ import annotations

import io
import re
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio
import yaml

from chatd.auth.keys import load_private_key, write_key_pair

from ..chatd.bridge.conftest import ALICE, BOB, Cluster, eventually, recorder
from ..chatd.bridge.services import free_port
from ..conftest import RUN_ID, unavailable

pytestmark = [pytest.mark.container, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
UNAVAILABLE = 3  # scripts/container-image: no container engine can work here
USER_ID = 10001  # the Dockerfile's USER
# runc (crun refuses this kind of machine's hybrid cgroups) and ulimits a sandbox may set;
# the host network reaches the shared PostgreSQL and RabbitMQ on 127.0.0.1.
RUN = [
    "--runtime",
    "runc",
    "--cgroup-manager=cgroupfs",
    "run",
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=4096:4096",
    "--network",
    "host",
]
KEY_IN_CONTAINER = "/etc/chatd/keys/public.pem"
START_TIMEOUT = 60.0
# What an image must not carry: signing keys, the repository's tests and dev files, build
# tools, package caches, the installer itself.
FORBIDDEN = re.compile(
    r"""(^|/)(
      dev-jwt-[^/]*\.pem | jwt-private\.pem | conftest\.py | tests?/(chatd|stomp|node)/
    | site-packages/tests/ | node_modules/ | \.git/ | \.venv/ | chatd-data/ | wheels/
    | \.cache/ | bin/(gcc|cc|c\+\+|g\+\+|x86_64-linux-gnu-gcc)[^/]*$ | opt/chatd/bin/pip
)""",
    re.X,
)


def podman(*args: str, check: bool = True) -> str:
    done = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=120)
    if check:
        assert done.returncode == 0, f"podman {' '.join(args)}: {done.stderr}"
    return done.stdout


async def apodman(*args: str, check: bool = True) -> str:
    """`podman` for async tests: the STOMP clients keep running meanwhile."""
    done = await trio.run_process(
        ["podman", *args], capture_stdout=True, capture_stderr=True, check=False
    )
    if check:
        assert done.returncode == 0, f"podman {' '.join(args)}: {done.stderr.decode()}"
    return done.stdout.decode()


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    """The image built from the working tree (tagged for this run, removed afterwards)."""
    name = f"localhost/chatd:test-{RUN_ID}"
    built = subprocess.run(
        [str(ROOT / "scripts" / "container-image"), name],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if built.returncode == UNAVAILABLE:
        unavailable(f"no container engine here: {built.stderr.strip()}")
    assert built.returncode == 0, built.stderr
    try:
        yield name
    finally:
        podman("rmi", "--force", name, check=False)


def test_image_runs_as_its_user_and_holds_no_keys_tests_compilers_or_caches(image: str) -> None:
    config = podman(
        "image",
        "inspect",
        "--format",
        "{{.Config.User}} {{json .Config.Entrypoint}} {{json .Config.Cmd}}",
        image,
    )
    assert config.split()[0] == f"{USER_ID}:{USER_ID}"
    container = podman("create", image).strip()
    try:
        export = subprocess.run(
            ["podman", "export", container], capture_output=True, check=True, timeout=120
        ).stdout
    finally:
        podman("rm", container, check=False)
    members: dict[str, tarfile.TarInfo] = {}
    with tarfile.open(fileobj=io.BytesIO(export)) as tar:
        for member in tar:
            name = member.name.removeprefix("./")
            members[name] = member
            assert not FORBIDDEN.search(name), f"the image holds {name}"
            if member.isfile() and name.endswith((".pem", ".key")):
                data = tar.extractfile(member).read()  # type: ignore[union-attr]
                assert b"PRIVATE KEY" not in data, f"the image holds a private key: {name}"
        shipped = tar.extractfile(members["etc/chatd/chatd.toml"]).read()  # type: ignore[union-attr]
    assert shipped == (ROOT / "deploy" / "chatd.toml").read_bytes()
    assert members["var/lib/chatd"].uid == USER_ID  # the data dir is the user's to write
    assert "opt/chatd/bin/chatd" in members
    assert not any(name.startswith("src/") for name in members)  # the build stage stayed behind


def grace_period() -> float:
    """compose's stop_grace_period for the chatd instances, in seconds."""
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    period = str(compose["x-chatd"]["stop_grace_period"])
    return float(period.removesuffix("s"))


class Container:
    """One `chatd serve` container on its own port of the host network (`start()` it)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.port = free_port()
        self.http = f"http://127.0.0.1:{self.port}"

    async def start(self, image: str, env: dict[str, str], key: Path, *options: str) -> None:
        env = {**env, "CHATD_BIND": f"127.0.0.1:{self.port}"}
        await apodman(
            *RUN,
            "--detach",
            "--name",
            self.name,
            *options,
            *(f"--env={k}={v}" for k, v in env.items()),
            "--volume",
            f"{key}:{KEY_IN_CONTAINER}:ro",
            image,
        )

    async def ready(self, client: httpx.AsyncClient) -> httpx.Response:
        """/health/ready once it answers 200 (the last answer after START_TIMEOUT)."""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                answer = await client.get(f"{self.http}/health/ready")
                if answer.status_code == 200 or time.monotonic() > deadline:
                    return answer
            except httpx.TransportError:
                assert time.monotonic() < deadline, await self.logs()
            state = (await apodman("inspect", "--format", "{{.State.Status}}", self.name)).strip()
            assert state == "running", f"{self.name} is {state}: {await self.logs()}"
            await trio.sleep(0.2)

    async def logs(self) -> str:
        return (await apodman("logs", self.name, check=False))[-3000:]

    async def process_uid(self) -> int:
        """The real uid of the container's main process, read from the host's /proc."""
        pid = (await apodman("inspect", "--format", "{{.State.Pid}}", self.name)).strip()
        status = await trio.Path(f"/proc/{pid}/status").read_text()
        return int(re.search(r"^Uid:\s+(\d+)", status, re.M).group(1))  # type: ignore[union-attr]


async def test_migrate_then_two_instances_relay_and_stop_on_sigterm(
    image: str, database_url: str, vhost: str, tmp_path: Path, nursery: trio.Nursery
) -> None:
    private, public = write_key_pair(tmp_path / "keys")  # throwaway: the image has none
    migrated = await apodman(
        *RUN,
        "--rm",
        "--no-healthcheck",
        "--env",
        f"CHATD_DATABASE_URL={database_url}",
        image,
        "migrate",
        "--config",
        "/etc/chatd/chatd.toml",
    )
    assert re.search(r"applied [1-9]\d* migration", migrated), migrated

    env = {
        "CHATD_DATABASE_URL": database_url,
        "CHATD_RABBITMQ_URL": f"amqp://guest:guest@127.0.0.1:5672/{vhost}",
        "CHATD_JWT_PUBLIC_KEY": KEY_IN_CONTAINER,
    }
    containers = a, b = [Container(f"chatd-test-{RUN_ID}-{n}") for n in ("a", "b")]
    async with httpx.AsyncClient(timeout=10) as client:
        try:
            # A runs on a read-only root filesystem, as the Kubernetes pods do (/tmp excepted)
            await a.start(image, env, public, "--read-only")
            await b.start(image, env, public)
            for container in containers:
                answer = await container.ready(client)
                assert answer.status_code == 200, (answer.text, await container.logs())
                assert await container.process_uid() == USER_ID
                await apodman("healthcheck", "run", container.name)  # HEALTHCHECK passes

            # REST with a token on A; Bob's WebSocket subscription on B receives it
            cluster = Cluster({}, tmp_path, load_private_key(private), client)
            sid = await cluster.init(a)  # type: ignore[arg-type]
            bob = await recorder(nursery, cluster, b, BOB)  # type: ignore[arg-type]
            await bob.subscribe(f"/topic/session.{sid}", "topic")
            sent = await cluster.send(a, sid, "from a container", "c1")  # type: ignore[arg-type]
            assert sent.status_code == 201, sent.text
            await bob.wait(lambda: len(bob.frames.get("topic", [])) == 1)
            message = bob.bodies("topic")[0]
            assert (message["content"], message["senderEmail"]) == ("from a container", ALICE)

            # SIGTERM (podman stop) ends B cleanly before the grace period's SIGKILL
            grace = grace_period()
            started = time.monotonic()
            await apodman("stop", "--time", str(int(grace)), b.name)
            elapsed = time.monotonic() - started
            exit_code = await apodman("inspect", "--format", "{{.State.ExitCode}}", b.name)
            assert exit_code.strip() == "0", await b.logs()
            assert elapsed < grace
            await eventually(lambda: bob.ws.closed is not None, seconds=5)
            assert bob.ws.closed.code == 1001  # type: ignore[union-attr]
            assert [e.get("message") for e in bob.errors] == ["server shutting down"]
            changed = await apodman("diff", b.name)
            assert "dev-jwt" not in changed  # a configured key: no dev keys minted at start
        finally:
            with trio.CancelScope(shield=True):
                for container in containers:
                    await apodman("rm", "--force", "--time", "0", container.name, check=False)
