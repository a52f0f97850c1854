"""The `chatd` command as operators run it: a subprocess, exit codes, stdout/stderr."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from chatd.auth import TokenVerifier, load_public_key
from chatd.auth.keys import DEV_PRIVATE_KEY_NAME, DEV_PUBLIC_KEY_NAME
from tests.conftest import unavailable

ROOT = Path(__file__).resolve().parents[2]
CHATD = Path(sys.executable).with_name("chatd")


def run(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m chatd ARGS` with a clean CHATD_* environment."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("CHATD_")}
    return subprocess.run(
        [sys.executable, "-m", "chatd", *args],
        cwd=cwd,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_console_script_is_installed(tmp_path: Path) -> None:
    if not CHATD.exists():
        unavailable("console script not installed in this environment")
    result = subprocess.run([str(CHATD), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for command in ("serve", "migrate", "check-config", "keys", "token"):
        assert command in result.stdout


def test_check_config_ok(tmp_path: Path) -> None:
    result = run("check-config", str(ROOT / "conf" / "chatd.example.toml"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout
    assert "sqlite:///chatd-data/chatd.sqlite3" in result.stdout


def test_check_config_hides_passwords(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[database]\nurl = "postgresql://chat:hunter2@db/chat"\n')
    result = run("check-config", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "hunter2" not in result.stdout
    assert "chat:***@db" in result.stdout


def test_check_config_says_where_spans_go(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[tracing]\nservice_name = "chatd-eu"\n')
    off = run("check-config", str(path), cwd=tmp_path, env={"OTEL_SDK_DISABLED": "true"})
    assert "tracing: off" in off.stdout, off.stderr
    on = run(
        "check-config",
        str(path),
        cwd=tmp_path,
        env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://tempo:4318", "OTEL_SDK_DISABLED": ""},
    )
    assert "tracing: OTLP/HTTP to http://tempo:4318/v1/traces as chatd-eu" in on.stdout, on.stderr


def test_check_config_error_is_one_line_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[limits]\nsend_burst = -1\n")
    result = run("check-config", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"chatd: error: {path}: limits.send_burst: must be at least 1, got -1"
    ]


def test_env_error_names_the_variable(tmp_path: Path) -> None:
    result = run("token", "a@example.com", cwd=tmp_path, env={"CHATD_BIND": "nope"})
    assert result.returncode == 2
    assert "environment variable CHATD_BIND: server.bind" in result.stderr
    assert "Traceback" not in result.stderr


def test_keys_writes_a_pair_and_refuses_to_overwrite(tmp_path: Path) -> None:
    result = run("keys", "--out", "k", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    private_path = tmp_path / "k" / "jwt-private.pem"
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
    assert (tmp_path / "k" / "jwt-public.pem").exists()
    again = run("keys", "--out", "k", cwd=tmp_path)
    assert again.returncode == 2
    assert "already exists" in again.stderr


def test_token_with_embedded_default_generates_dev_keys(tmp_path: Path) -> None:
    result = run("token", "  Alice@Example.com", "--data-dir", "data", "--ttl", "60", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "generated" in result.stderr
    public = load_public_key(tmp_path / "data" / DEV_PUBLIC_KEY_NAME)
    assert TokenVerifier(public).verify(result.stdout.strip()) == "alice@example.com"
    assert stat.S_IMODE((tmp_path / "data" / DEV_PRIVATE_KEY_NAME).stat().st_mode) == 0o600
    second = run("token", "bob@example.com", "--data-dir", "data", cwd=tmp_path)
    assert second.returncode == 0
    assert second.stderr == ""
    assert TokenVerifier(public).verify(second.stdout.strip()) == "bob@example.com"


def test_token_honours_config_issuer_and_audience(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[auth]\nissuer = "https://id/"\naudience = "chat"\n[server]\ndata_dir = "d"\n')
    result = run("token", "c@example.com", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    public = load_public_key(tmp_path / "d" / DEV_PUBLIC_KEY_NAME)
    verifier = TokenVerifier(public, issuer="https://id/", audience="chat")
    assert verifier.verify(result.stdout.strip()) == "c@example.com"


def test_token_kid_from_flag_or_config(tmp_path: Path) -> None:
    import jwt

    result = run("token", "k@example.com", "--data-dir", "d", "--kid", "dev-7", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert jwt.get_unverified_header(result.stdout.strip())["kid"] == "dev-7"
    result = run(
        "token",
        "k@example.com",
        "--data-dir",
        "d",
        cwd=tmp_path,
        env={"CHATD_AUTH__DEV_KID": "dev-8"},
    )
    assert jwt.get_unverified_header(result.stdout.strip())["kid"] == "dev-8"
    result = run("token", "k@example.com", "--data-dir", "d", cwd=tmp_path)
    assert "kid" not in jwt.get_unverified_header(result.stdout.strip())


def test_token_refuses_bad_email_and_external_keys(tmp_path: Path) -> None:
    result = run("token", "not-an-email", cwd=tmp_path)
    assert result.returncode == 2
    assert "EMAIL is not a valid email address" in result.stderr
    result = run("token", "a@example.com", cwd=tmp_path, env={"CHATD_JWT_PUBLIC_KEY": "p.pem"})
    assert result.returncode == 2
    assert "dev_private_key_file" in result.stderr


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert run(cwd=tmp_path).returncode == 2
    assert run("frobnicate", cwd=tmp_path).returncode == 2
    assert run("token", cwd=tmp_path).returncode == 2


def test_serve_validates_flags_before_starting(tmp_path: Path) -> None:
    result = run("serve", "--bind", "localhost", cwd=tmp_path)
    assert result.returncode == 2
    assert "command line (server.bind): server.bind: expected HOST:PORT" in result.stderr


def test_serve_runs_with_the_garbage_collector_tuned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Python's default thresholds ran a full collection about once a second under the
    soak's load (0.66 s each, most of the process's time): `serve` raises them and freezes
    what start-up made, before the event loop starts."""
    import gc

    import trio

    from chatd.cli import GC_THRESHOLDS, main

    seen: list[tuple[tuple[int, int, int], int]] = []
    monkeypatch.setattr(
        trio, "run", lambda *_a: seen.append((gc.get_threshold(), gc.get_freeze_count()))
    )
    before = gc.get_threshold()
    try:
        code = main(["serve", "--data-dir", str(tmp_path), "--bind", "127.0.0.1:0"], env={})
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
    assert code == 0
    assert seen[0][0] == GC_THRESHOLDS != before
    assert seen[0][1] > 10_000  # the modules, classes and functions imported by then


#: Made garbage in the oldest generation, then allocates (one young collection per round)
#: until it is collected; prints the rounds that took.
OLD_GARBAGE_PROBE = """
import gc, weakref
from chatd.cli import GC_THRESHOLDS, tune_gc
tune_gc()
gc.collect()  # Python's rule also wants a quarter of the oldest generation new since its last
              # full collection: start that count from here, not from the imports'
class Node:
    pass
def cycle():
    a, b = Node(), Node()
    a.peer, b.peer = b, a
    return a
kept = [cycle() for _ in range(100)]
gc.collect(1)  # the survivors of a middle collection go to the oldest generation
assert any(o is kept[0] for o in gc.get_objects(2))
probe = weakref.ref(kept[0])
del kept
rounds = 0
while probe() is not None and rounds < 1000:
    batch = [Node() for _ in range(GC_THRESHOLDS[0] + 1)]
    del batch
    rounds += 1
print(rounds if probe() is None else "never")
"""


def test_garbage_in_the_oldest_generation_is_collected_within_minutes_of_load() -> None:
    """Cyclic garbage that reached the oldest generation (code chatd does not own leaves
    some there under load) is collected by Python's own schedule under chatd's thresholds:
    about 21 x 11 young collections later, not 21 x 101 (which under the soak's load never
    came, and each instance's memory grew with every HTTP request's werkzeug cycle)."""
    out = subprocess.run(
        [sys.executable, "-c", OLD_GARBAGE_PROBE],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    rounds = out.stdout.strip()
    # a middle collection takes the place of every 21st young one, the oldest's of every 11th
    # middle one: 221 here; with 100 it would be over 2 000
    assert rounds != "never"
    assert int(rounds) <= 21 * 11
