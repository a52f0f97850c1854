"""`chatd check-config --connect FILE`: one line per configured dependency with its result,
exit 0 when every one answers, 1 when one does not; run as a process against real services
(PostgreSQL, RabbitMQ) and fakes of the external HTTP ones."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import trio

from chatd.auth.keys import load_private_key, write_key_pair
from chatd.startup.probe import PROBE_EMAIL
from tests.chatd.fakes import FakeIdentityProvider, FakeProfileService


async def check_connect(config: Path) -> subprocess.CompletedProcess[bytes]:
    """The command as a process, while this test's fakes keep serving."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATD_")}
    with trio.fail_after(60):
        return await trio.run_process(
            [sys.executable, "-m", "chatd", "check-config", "--connect", str(config)],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=env,
        )


def closed_port() -> int:
    """A port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def write_config(path: Path, *, db: str, mq: str, jwks: str, profiles: str, key: Path) -> Path:
    path.write_text(
        f'[database]\nurl = "{db}"\n[rabbitmq]\nurl = "{mq}"\n[auth]\njwks_url = "{jwks}"\n'
        f'[profiles]\nprovider = "remote"\nurl = "{profiles}"\n'
        f'service_private_key_file = "{key}"\nkid = "chat-service-1"\n'
    )
    return path


async def test_every_dependency_answers(
    nursery: trio.Nursery, tmp_path: Path, private_db: str, rabbitmq_url: str
) -> None:
    private_path, _ = write_key_pair(tmp_path / "keys")
    public = load_private_key(private_path).public_key()
    service = FakeProfileService(service_key=public)
    idp = FakeIdentityProvider(keys={"idp-1": public})
    await nursery.start(service.run)
    await nursery.start(idp.run)
    config = write_config(
        tmp_path / "c.toml",
        db=private_db,
        mq=rabbitmq_url,
        jwks=idp.jwks_url,
        profiles=service.url,
        key=private_path,
    )

    result = await check_connect(config)
    out = result.stdout.decode()
    assert result.returncode == 0, out + result.stderr.decode()
    lines = out.split("connect:\n", 1)[1].splitlines()
    assert len(lines) == 4, out
    assert re.fullmatch(
        r"  database 127\.0\.0\.1:5432/chatd_private_\w+: ok, schema is missing: "
        r"`chatd migrate` or `chatd serve` applies the migrations",
        lines[0],
    )
    assert re.fullmatch(r"  rabbitmq 127\.0\.0\.1:5672/chatd_test_\w+: ok, connected", lines[1])
    assert lines[2] == (
        f"  profiles {service.url}: ok, answers and accepts our service token (HTTP 404)"
    )
    assert lines[3] == f"  jwks {idp.jwks_url}: ok, 1 key(s): idp-1"
    assert service.calls == [(PROBE_EMAIL, "check-config")]  # it really asked, token accepted
    assert idp.fetches == 1


async def test_each_failure_is_one_line_and_exit_1(nursery: trio.Nursery, tmp_path: Path) -> None:
    private_path, _ = write_key_pair(tmp_path / "keys")
    other_key = load_private_key(write_key_pair(tmp_path / "other")[0]).public_key()
    service = FakeProfileService(service_key=other_key)  # trusts another key than ours
    await nursery.start(service.run)
    db_port, mq_port, idp_port = closed_port(), closed_port(), closed_port()
    config = write_config(
        tmp_path / "c.toml",
        db=f"postgresql://postgres@127.0.0.1:{db_port}/chatd",
        mq=f"amqp://guest:guest@127.0.0.1:{mq_port}/%2F",
        jwks=f"http://127.0.0.1:{idp_port}/jwks.json",
        profiles=service.url,
        key=private_path,
    )

    result = await check_connect(config)
    out, err = result.stdout.decode(), result.stderr.decode()
    assert result.returncode == 1, out + err
    assert "Traceback" not in out + err
    lines = out.split("connect:\n", 1)[1].splitlines()
    assert len(lines) == 4, out
    assert re.fullmatch(
        rf"  database: FAILED: cannot connect to the database at 127\.0\.0\.1:"
        rf"{db_port}/chatd: connection refused \(tried once: .*\)",
        lines[0],
    )
    assert re.fullmatch(
        rf"  rabbitmq: FAILED: cannot connect to RabbitMQ at 127\.0\.0\.1:"
        rf"{mq_port}/%2F: connection refused \(.*CHATD_RABBITMQ_URL\)",
        lines[1],
    )
    assert re.fullmatch(
        rf"  profiles: FAILED: the profile service refused a look-up at "
        rf"{re.escape(service.url)}: HTTP 401 \(check \[profiles\] "
        r"service_private_key_file, kid, .*\)",
        lines[2],
    )
    assert re.fullmatch(
        rf"  jwks: FAILED: cannot fetch the token keys from http://127\.0\.0\.1:"
        rf"{idp_port}/jwks\.json: .*connect.* \(.*CHATD_JWKS_URL\)",
        lines[3],
    )
    assert service.refused  # the 401 was the token, as the line says


def test_public_key_file_and_sqlite_without_a_file(tmp_path: Path) -> None:
    _, public_path = write_key_pair(tmp_path / "keys")
    config = tmp_path / "c.toml"
    config.write_text(f'[auth]\npublic_key_file = "{public_path}"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATD_")}
    result = subprocess.run(
        [sys.executable, "-m", "chatd", "check-config", "--connect", str(config)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "  database chatd-data/chatd.sqlite3: ok, no file yet" in result.stdout
    assert f"  public key {public_path}: ok, RSA public key" in result.stdout
    assert not (tmp_path / "chatd-data").exists()  # checking creates nothing

    public_path.write_text("not a key\n")
    result = subprocess.run(
        [sys.executable, "-m", "chatd", "check-config", "--connect", str(config)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert re.search(
        r"  public key: FAILED: cannot load the token public key .*: not a PEM "
        r"public key",
        result.stdout,
    ), result.stdout


def test_redis_answers_or_is_one_line_with_its_fallback(tmp_path: Path, redis_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATD_")}
    config = tmp_path / "c.toml"
    for url, code in ((redis_url, 0), (f"redis://:secret@127.0.0.1:{closed_port()}/0", 1)):
        config.write_text(f'[redis]\nurl = "{url}"\nkey_prefix = "eu1:"\n')
        result = subprocess.run(
            [sys.executable, "-m", "chatd", "check-config", "--connect", str(config)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == code, result.stdout + result.stderr
        if code == 0:
            assert f"  redis {redis_url}: ok, answers (keys under 'eu1:')" in result.stdout
        else:
            assert "secret" not in result.stdout  # the password is never printed
            assert re.search(
                r"  redis: FAILED: cannot reach Redis at redis://:\*\*\*@127\.0\.0"
                r"\.1:\d+/0: .*connect.*chatd serve would start without it",
                result.stdout,
            ), result.stdout
