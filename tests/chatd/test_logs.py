"""Structured logs: JSON lines that parse, carry request ids, and never a token; text on a TTY."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from chatd.auth.keys import dev_signing_key
from chatd.auth.tokens import mint_token
from chatd.config import Config, LoggingConfig, ServerConfig
from chatd.observability.logs import (
    JsonFormatter,
    TextFormatter,
    choose_format,
    make_formatter,
    redact,
    request_id,
)

JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZUBleGFtcGxlLmNvbSJ9.c2lnbmF0dXJl"


def _record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("chatd.test", logging.INFO, __file__, 1, message, args, None)
    record.__dict__.update(extra)
    return record


def test_json_line_has_the_fields_and_no_token() -> None:
    token = request_id.set("req-1")
    try:
        line = JsonFormatter().format(
            _record(
                "auth header was %s",
                f"Bearer {JWT}",
                user="alice@example.com",
                content="hello",
                path="/api/chat/message",
                status=201,
                passcode=JWT,
            )
        )
    finally:
        request_id.reset(token)
    data = json.loads(line)
    assert JWT not in line
    assert data["event"] == "auth header was [redacted]"
    assert data["level"] == "INFO"
    assert data["logger"] == "chatd.test"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", data["time"])
    assert (data["request_id"], data["path"], data["status"]) == ("req-1", "/api/chat/message", 201)
    # Personal data and message text stay out unless configured; unknown extras never get in.
    assert "user" not in data
    assert "content" not in data
    assert "passcode" not in data


def test_user_and_content_only_when_configured() -> None:
    record = _record("sent", user="alice@example.com", content="hi bob")
    data = json.loads(JsonFormatter(include_user=True, include_content=True).format(record))
    assert (data["user"], data["content"]) == ("alice@example.com", "hi bob")
    text = TextFormatter(include_user=True).format(record)
    assert "user=alice@example.com" in text
    assert "hi bob" not in text


def test_an_encrypted_envelope_is_never_logged_even_with_content_logging_on() -> None:
    from tests.chatd.e2e_support import envelope_text

    for sealed in (envelope_text(), " " + json.dumps(json.loads(envelope_text()), indent=1)):
        record = _record("sent", content=sealed)
        data = json.loads(JsonFormatter(include_content=True).format(record))
        assert data["content"] == "[encrypted]"
        text = TextFormatter(include_content=True).format(record)
        assert "content=[encrypted]" in text
        assert json.loads(sealed)["ct"] not in text + json.dumps(data)
    plain = _record("sent", content='{"v": 2, "note": "a plain text that looks like JSON"}')
    assert "plain text" in json.loads(JsonFormatter(include_content=True).format(plain))["content"]


def test_exceptions_are_one_line_and_redacted() -> None:
    try:
        raise ValueError(f"bad token {JWT}")
    except ValueError:
        record = logging.LogRecord("chatd", logging.ERROR, __file__, 1, "boom", (), sys.exc_info())
    line = JsonFormatter().format(record)
    assert "\n" not in line
    assert JWT not in line
    assert "ValueError" in json.loads(line)["exception"]


@pytest.mark.parametrize(
    "text", [f"Bearer {JWT}", f"bearer  {JWT[:20]}", JWT, f"?access_token={JWT}"]
)
def test_redact_catches_token_shapes(text: str) -> None:
    assert JWT[:20] not in redact(text)


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_auto_is_text_on_a_tty_and_json_otherwise() -> None:
    assert choose_format("auto", _Stream(True)) == "text"
    assert choose_format("auto", _Stream(False)) == "json"
    assert choose_format("json", _Stream(True)) == "json"
    assert isinstance(make_formatter(LoggingConfig(format="auto"), _Stream(False)), JsonFormatter)
    assert isinstance(make_formatter(LoggingConfig(format="text"), _Stream(False)), TextFormatter)


def test_chatd_serve_logs_json_lines_without_tokens(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATD_")}
    env["CHATD_LOG_FORMAT"] = "json"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "chatd",
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--data-dir",
            str(tmp_path),
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    lines: list[str] = []
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 30
        base = None
        while base is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            if match := re.search(r"chatd ready http=(http://\S+)", line):
                base = match.group(1)
        assert base is not None, "".join(lines)
        config = Config(server=ServerConfig(data_dir=tmp_path))
        token = mint_token(dev_signing_key(config)[0].read_bytes(), "alice@example.com")
        with httpx.Client(base_url=base) as client:
            auth = {"Authorization": f"Bearer {token}", "X-Request-ID": "trace-42"}
            init = client.post(
                "/api/chat/init",
                headers=auth,
                json={"toEmail": "bob@example.com", "intent": "demo"},
            )
            assert init.status_code == 200
            refused = client.get(
                f"/api/chat/sessions?access_token={token}",
                headers={"Authorization": "Bearer not-a-valid-token-value"},
            )
            assert refused.status_code == 401
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        lines += proc.stderr.readlines()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = "".join(lines)
    assert token not in output
    assert "not-a-valid-token-value" not in output
    records = [json.loads(line) for line in lines if line.strip()]  # every line parses
    events = [r["event"] for r in records]
    assert any(e.startswith("chatd ready") for e in events)
    assert events[-1] == "chatd stopped"
    access = [r for r in records if r["logger"] == "chatd.access"]
    init_line = next(r for r in access if r["path"] == "/api/chat/init")
    assert (init_line["request_id"], init_line["status"]) == ("trace-42", 200)
    assert "user" not in init_line  # logging.include_user is off by default
    assert any(r["path"] == "/api/chat/sessions" and r["status"] == 401 for r in access)
