"""Every start-up failure of `chatd serve` / `chatd migrate`, as an operator meets it: the
command run as a process ends with ONE line naming the part, the address or file, the cause
and what to do, exits 2 (configuration) or 1 (a dependency), and prints no traceback."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import trio

from tests.chatd.bridge.services import PrivatePostgres, service_root
from tests.chatd.conftest import SwitchableProxy
from tests.conftest import PG_ADMIN_URL, require_service, unavailable

ADDR = r"127\.0\.0\.1:\d+"


def chatd(
    *args: str,
    cwd: Path,
    env: dict[str, str] | None = None,
    timeout: float = 60,
    wrapper: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:
    """`python -m chatd ARGS` with a clean CHATD_* environment and text logs."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("CHATD_")}
    return subprocess.run(
        [*wrapper, sys.executable, "-m", "chatd", *args],
        cwd=cwd,
        env={**base, "CHATD_LOG_FORMAT": "text", **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_line(result: subprocess.CompletedProcess[str], code: int, pattern: str) -> str:
    """Assert the exit `code`, no traceback, and that stderr ends with the one ``chatd: ...``
    line matching `pattern` (and says nothing else in that voice); return that line."""
    err = result.stderr
    assert result.returncode == code, err
    assert "Traceback" not in err, err
    assert "ExceptionGroup" not in err, err
    lines = err.strip().splitlines()
    assert lines, "nothing on stderr"
    assert re.fullmatch(f"chatd: {pattern}", lines[-1]), lines[-1]
    assert [line for line in lines if line.startswith("chatd:")] == [lines[-1]], err
    return lines[-1]


def serve(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return chatd(
        "serve",
        "--bind",
        "127.0.0.1:0",
        "--data-dir",
        str(tmp_path / "data"),
        *args,
        cwd=tmp_path,
        env=env,
    )


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port some other process listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port nothing listens on (bound, never listening: connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


# -- listeners -----------------------------------------------------------------------------


def test_port_in_use(tmp_path: Path, taken_port: int) -> None:
    result = chatd("serve", "--bind", f"127.0.0.1:{taken_port}", "--data-dir", "d", cwd=tmp_path)
    one_line(
        result,
        1,
        rf"cannot listen on 127\.0\.0\.1:{taken_port}: address already in use "
        r"\(is another chatd running\? set --bind or CHATD_BIND\)",
    )


def test_address_not_on_this_host(tmp_path: Path) -> None:
    # 192.0.2.0/24 is TEST-NET-1: never assigned, so binding fails here (nothing is sent)
    result = chatd("serve", "--bind", "192.0.2.1:8080", "--data-dir", "d", cwd=tmp_path)
    one_line(
        result,
        2,
        r"cannot listen on 192\.0\.2\.1:8080: cannot assign requested address "
        r"\(this host has no such address: set --bind or CHATD_BIND to .*\)",
    )


def test_bind_host_that_does_not_resolve(tmp_path: Path) -> None:
    result = chatd("serve", "--bind", "no-such-host.invalid:8080", "--data-dir", "d", cwd=tmp_path)
    one_line(
        result,
        2,
        r"cannot listen on no-such-host\.invalid:8080: .+ \(set --bind or "
        r"CHATD_BIND to an address or a name this host resolves\)",
    )


def test_port_not_permitted(tmp_path: Path) -> None:
    # Tests run as root: take away the one capability that lets root bind ports below 1024.
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        unavailable("setpriv (util-linux) is not installed")
    drop = (setpriv, "--bounding-set=-net_bind_service", "--inh-caps=-net_bind_service")
    result = chatd("serve", "--bind", "127.0.0.1:1", "--data-dir", "d", cwd=tmp_path, wrapper=drop)
    one_line(
        result,
        2,
        r"cannot listen on 127\.0\.0\.1:1: permission denied \(ports below 1024 "
        r"need root or CAP_NET_BIND_SERVICE: set --bind or CHATD_BIND to a port "
        r"above 1023\)",
    )


def test_raw_stomp_port_in_use(tmp_path: Path, taken_port: int) -> None:
    result = serve(tmp_path, env={"CHATD_SERVER__STOMP_TCP_BIND": f"127.0.0.1:{taken_port}"})
    one_line(
        result,
        1,
        rf"cannot listen on 127\.0\.0\.1:{taken_port}: address already in use "
        r"\(is another chatd running\? set \[server\] stomp_tcp_bind or "
        r"CHATD_SERVER__STOMP_TCP_BIND\)",
    )


# -- files ---------------------------------------------------------------------------------


@pytest.mark.parametrize("make", ["file", "not-permitted"])
def test_data_dir_not_writable(tmp_path: Path, make: str) -> None:
    if make == "file":
        data_dir = tmp_path / "data"
        data_dir.write_text("not a folder")
        cause = "exists and is not a folder"
    else:
        data_dir = Path("/sys") / f"chatd-{uuid.uuid4().hex[:8]}"  # mkdir is refused, even to root
        cause = r"(operation not permitted|permission denied|read-only file system)"
    result = chatd("serve", "--bind", "127.0.0.1:0", "--data-dir", str(data_dir), cwd=tmp_path)
    one_line(
        result,
        2,
        rf"cannot write to the data dir {re.escape(str(data_dir))}: {cause} "
        r"\(set --data-dir or CHATD_DATA_DIR to a folder chatd may write, .*\)",
    )


def test_config_file_unreadable_or_invalid(tmp_path: Path) -> None:
    one_line(
        chatd("serve", "--config", str(tmp_path), cwd=tmp_path),
        2,
        rf"error: {re.escape(str(tmp_path))}: cannot read config file: Is a directory",
    )
    one_line(
        chatd("serve", "--config", "missing.toml", cwd=tmp_path),
        2,
        r"error: missing.toml: config file not found",
    )
    (tmp_path / "bad.toml").write_text("[server\n")
    one_line(
        chatd("serve", "--config", "bad.toml", cwd=tmp_path),
        2,
        r"error: bad.toml: invalid TOML: .*",
    )


def test_public_key_missing_or_not_a_key(tmp_path: Path) -> None:
    hint = (
        r"\(set \[auth\] public_key_file or CHATD_JWT_PUBLIC_KEY to an RSA public key in "
        r"PEM; `chatd keys` writes a pair\)"
    )
    result = serve(tmp_path, env={"CHATD_JWT_PUBLIC_KEY": "missing.pem"})
    one_line(
        result,
        2,
        r"cannot load the token public key missing.pem: cannot read key file: "
        rf"No such file or directory {hint}",
    )
    (tmp_path / "junk.pem").write_text("hello\n")
    result = serve(tmp_path, env={"CHATD_JWT_PUBLIC_KEY": "junk.pem"})
    one_line(
        result, 2, rf"cannot load the token public key junk.pem: not a PEM public key .* {hint}"
    )


def test_service_key_missing(tmp_path: Path, closed_port: int) -> None:
    result = serve(
        tmp_path,
        env={
            "CHATD_PROFILE_SERVICE_URL": f"http://127.0.0.1:{closed_port}",
            "CHATD_SERVICE_PRIVATE_KEY": "nope.pem",
        },
    )
    one_line(
        result,
        2,
        r"cannot load the profile-service signing key nope.pem: cannot read key "
        r"file: No such file or directory \(set \[profiles\] "
        r"service_private_key_file or CHATD_SERVICE_PRIVATE_KEY to .*\)",
    )


def test_jwks_unreachable(tmp_path: Path, closed_port: int) -> None:
    url = f"http://127.0.0.1:{closed_port}/jwks.json"
    result = serve(tmp_path, env={"CHATD_JWKS_URL": url})
    one_line(
        result,
        1,
        rf"cannot fetch the token keys from {re.escape(url)}: .*connect.* "
        r"\(is the identity provider reachable from here\? check \[auth\] "
        r"jwks_url or CHATD_JWKS_URL\)",
    )


# -- the database --------------------------------------------------------------------------


def test_database_unreachable_waits_then_one_line(tmp_path: Path, closed_port: int) -> None:
    url = f"postgresql://postgres@127.0.0.1:{closed_port}/chatd"
    started = time.monotonic()
    result = serve(
        tmp_path, env={"CHATD_DATABASE_URL": url, "CHATD_DATABASE__STARTUP_TIMEOUT": "1.5"}
    )
    assert time.monotonic() - started < 20  # never hangs: the wait is bounded
    one_line(
        result,
        1,
        rf"cannot connect to the database at 127\.0\.0\.1:{closed_port}/chatd: "
        r"connection refused \(gave up after 1\.5 s: is PostgreSQL running "
        r"there\? check \[database\] url or CHATD_DATABASE_URL, or raise "
        r"\[database\] startup_timeout\)",
    )
    tries = [line for line in result.stderr.splitlines() if "not reachable" in line]
    assert len(tries) >= 2, result.stderr  # one line per retry: host, port, cause, next try
    assert all(
        re.search(
            rf"database at 127\.0\.0\.1:{closed_port}/chatd not reachable: "
            r"connection refused; next try in \d+\.\d s",
            line,
        )
        for line in tries
    )


def test_database_wait_lines_are_json_events_with_json_logs(
    tmp_path: Path, closed_port: int
) -> None:
    url = f"postgresql://postgres@127.0.0.1:{closed_port}/chatd"
    result = serve(
        tmp_path,
        env={
            "CHATD_DATABASE_URL": url,
            "CHATD_LOG_FORMAT": "json",
            "CHATD_DATABASE__STARTUP_TIMEOUT": "0.6",
        },
    )
    assert result.returncode == 1
    events = [json.loads(line) for line in result.stderr.strip().splitlines()]
    tries = [e for e in events if e["level"] == "WARNING" and e["logger"] == "chatd.startup"]
    assert tries, events
    for event in tries:
        assert event["part"] == "database"
        assert event["address"] == f"127.0.0.1:{closed_port}/chatd"
        assert event["cause"] == "connection refused"
        assert 0 < event["retry_in"] <= 0.6
    assert events[-1]["event"].startswith(
        f"cannot connect to the database at 127.0.0.1:{closed_port}/chatd: connection refused"
    )


def test_migrate_unreachable_tries_once_with_timeout_zero(tmp_path: Path, closed_port: int) -> None:
    url = f"postgresql://postgres@127.0.0.1:{closed_port}/chatd"
    result = chatd(
        "migrate",
        cwd=tmp_path,
        env={"CHATD_DATABASE_URL": url, "CHATD_DATABASE__STARTUP_TIMEOUT": "0"},
    )
    one_line(
        result,
        1,
        rf"cannot connect to the database at 127\.0\.0\.1:{closed_port}/chatd: "
        r"connection refused \(tried once: .*\)",
    )
    assert "not reachable" not in result.stderr


async def test_database_that_comes_up_during_the_wait_is_used(
    tmp_path: Path, proxied_pg: tuple[str, SwitchableProxy]
) -> None:
    url, proxy = proxied_pg
    proxy.switch(False)  # PostgreSQL "down": connections are closed at once
    base = {k: v for k, v in os.environ.items() if not k.startswith("CHATD_")}
    env = {**base, "CHATD_LOG_FORMAT": "text", "CHATD_DATABASE_URL": url}
    proc = await trio.lowlevel.open_process(
        [
            sys.executable,
            "-m",
            "chatd",
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--data-dir",
            str(tmp_path / "data"),
        ],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    )
    assert proc.stderr is not None
    seen = ""
    try:
        with trio.fail_after(30):
            while "chatd ready" not in seen:
                chunk = await proc.stderr.receive_some(65536)
                assert chunk, seen
                seen += chunk.decode()
                if "not reachable" in seen and not proxy.up:
                    proxy.switch(True)  # PostgreSQL is back: the next try gets it
            proc.terminate()
            assert await proc.wait() == 0  # a clean stop after the wait is exit 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert re.search(r"database at 127\.0\.0\.1:\d+/\S+ not reachable: .+; next try in", seen)
    assert "Traceback" not in seen


def test_missing_database(tmp_path: Path) -> None:
    require_service("PostgreSQL", ("127.0.0.1", 5432))
    name = f"chatd_missing_{uuid.uuid4().hex[:8]}"
    url = f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    started = time.monotonic()
    result = serve(tmp_path, env={"CHATD_DATABASE_URL": url})
    assert time.monotonic() - started < 15  # no start-up wait for what waiting cannot fix
    one_line(
        result,
        2,
        rf"cannot open the database at 127\.0\.0\.1:5432/{name}: database "
        rf"\"{name}\" does not exist \(create it with createdb {name}, or fix "
        r"the name in \[database\] url or CHATD_DATABASE_URL\)",
    )


@pytest.fixture(scope="module")
def password_pg() -> Iterator[PrivatePostgres]:
    """A private cluster whose TCP logins need a password (the shared one trusts 127.0.0.1)."""
    if shutil.which("su") is None or not Path("/usr/lib/postgresql").exists():
        unavailable("PostgreSQL server binaries are not installed")
    root = service_root()
    pg = PrivatePostgres.create(root / "pg", password="right-password")
    pg.start()
    try:
        yield pg
    finally:
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_wrong_database_password(tmp_path: Path, password_pg: PrivatePostgres) -> None:
    url = f"postgresql://postgres:wrong@127.0.0.1:{password_pg.port}/postgres"
    result = serve(tmp_path, env={"CHATD_DATABASE_URL": url})
    line = one_line(
        result,
        2,
        rf"cannot log in to the database at 127\.0\.0\.1:"
        rf"{password_pg.port}/postgres: password authentication failed "
        r"for user \"postgres\" \(check the user and password in "
        r"\[database\] url or CHATD_DATABASE_URL\)",
    )
    assert "wrong" not in line  # never the password itself
    # the right password passes the same check: the failure above was the password
    good = url.replace(":wrong@", ":right-password@")
    (tmp_path / "c.toml").write_text(f'[database]\nurl = "{good}"\n')
    check = chatd("check-config", "--connect", "c.toml", cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    assert re.search(r"database 127\.0\.0\.1:\d+/postgres: ok", check.stdout), check.stdout


def test_schema_newer_than_the_code(tmp_path: Path, private_db: str) -> None:
    assert chatd("migrate", cwd=tmp_path, env={"CHATD_DATABASE_URL": private_db}).returncode == 0
    with psycopg.connect(private_db, autocommit=True) as conn:
        conn.execute("INSERT INTO schema_migrations (version, name) VALUES (9999, '9999_later')")
    result = serve(tmp_path, env={"CHATD_DATABASE_URL": private_db})
    one_line(
        result,
        1,
        r"cannot use the database at 127\.0\.0\.1:5432/chatd_private_\w+: "
        r"database has migrations this chatd does not know: 9999 \(9999_later\) "
        r"\(it was migrated by a newer chatd: run that release or a later one, "
        r"or restore a backup\)",
    )


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_migration_failing_half_way_applies_nothing(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str
) -> None:
    # migration 0001 creates chat_sessions, then chat_messages: a table already named
    # chat_messages makes it fail half-way
    if backend == "postgres":
        url = request.getfixturevalue("private_db")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE chat_messages (x int)")
        where = r"127\.0\.0\.1:5432/chatd_private_\w+"
        cause = r"relation \"chat_messages\" already exists"
    else:
        path = tmp_path / "chat.sqlite3"
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE chat_messages (x int)")
        url, where = f"sqlite:///{path}", re.escape(str(path))
        cause = "table chat_messages already exists"
    result = chatd("migrate", cwd=tmp_path, env={"CHATD_DATABASE_URL": url})
    one_line(
        result,
        1,
        rf"cannot migrate the database at {where}: migration 0001_init failed: "
        rf"{cause} \(nothing was applied, the run is one transaction: .*\)",
    )
    if backend == "postgres":
        with psycopg.connect(url) as conn:
            row = conn.execute(
                "SELECT to_regclass('chat_sessions'), to_regclass('schema_migrations')"
            ).fetchone()
        assert row == (None, None)  # what ran before the failure was rolled back
    else:
        with sqlite3.connect(path) as conn:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        assert not tables & {"chat_sessions", "schema_migrations"}


# -- how it is said ------------------------------------------------------------------------


def test_json_logs_get_one_json_event(tmp_path: Path, taken_port: int) -> None:
    result = chatd(
        "serve",
        "--bind",
        f"127.0.0.1:{taken_port}",
        "--data-dir",
        "d",
        cwd=tmp_path,
        env={"CHATD_LOG_FORMAT": "json"},
    )
    assert result.returncode == 1
    events = [json.loads(line) for line in result.stderr.strip().splitlines()]  # all JSON
    last = events[-1]
    assert last["level"] == "ERROR"
    assert last["event"].startswith(f"cannot listen on 127.0.0.1:{taken_port}: address already")
    assert last["part"] == "http"
    assert last["address"] == f"127.0.0.1:{taken_port}"
    assert last["cause"] == "address already in use"
    assert last["hint"] == "is another chatd running? set --bind or CHATD_BIND"
    assert "exception" not in last
    assert sum("cannot listen" in e["event"] for e in events) == 1


@pytest.mark.parametrize("how", ["--debug", "CHATD_LOG_LEVEL=debug"])
def test_debug_adds_the_traceback(tmp_path: Path, how: str) -> None:
    flags = ["--debug"] if how == "--debug" else []
    env = {} if flags else {"CHATD_LOG_LEVEL": "debug"}
    result = chatd(
        "serve", "--bind", "192.0.2.1:8080", "--data-dir", "d", *flags, cwd=tmp_path, env=env
    )
    assert result.returncode == 2
    assert "Traceback" in result.stderr
    assert "OSError" in result.stderr  # the cause behind the line
    assert result.stderr.strip().splitlines()[-1].startswith("chatd: cannot listen on 192.0.2.1")
