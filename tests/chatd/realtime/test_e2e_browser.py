"""End-to-end encryption through the demo page in headless Chromium, with two chatd instances
bridged by RabbitMQ: what the pages show, and that no plaintext reaches the server's side.

alice's page talks to instance 1 and bob's to instance 2 (``chatd serve`` processes sharing a
fresh PostgreSQL database and a fresh vhost), so every message crosses RabbitMQ. A queue of
the test's own, bound to the exchange with ``#``, copies everything that goes through it.
tests/node/e2e_scenario.mjs drives the pages (see its header for the steps, including bob's
new device and the key-change warning). Afterwards the test searches the messages and outbox
tables, the captured RabbitMQ traffic and both instances' logs for the texts: none may appear,
while the envelopes must (so the search can not pass by looking in the wrong place).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio

from chatd.domain.envelope import ALGORITHM, validate_envelope
from tests.chatd.bridge.conftest import open_cluster
from tests.node_support import require_node, run_scenario

from .test_browser import ARTIFACTS, CHROMIUM

CAPTURE = "e2e-test.capture"
TEXTS = ["the eagle lands at noon", "copy that, noon it is", "new phone, same plan"]


@pytest.fixture(scope="module")
def node() -> str:
    path = require_node("playwright-core")
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} missing: apt-get install chromium (scripts/test does)")
    return path


def _capture(url: str) -> None:
    import pika

    with pika.BlockingConnection(pika.URLParameters(url)) as conn:
        channel = conn.channel()
        channel.queue_declare(CAPTURE)
        channel.queue_bind(CAPTURE, "chatd.events", "#")


def _captured(url: str) -> list[bytes]:
    import pika

    bodies = []
    with pika.BlockingConnection(pika.URLParameters(url)) as conn:
        channel = conn.channel()
        while True:
            method, _, body = channel.basic_get(CAPTURE, auto_ack=True)
            if method is None:
                return bodies
            bodies.append(body)


def _stored(url: str) -> tuple[list[str], list[str]]:
    with psycopg.connect(url) as conn:
        contents = [r[0] for r in conn.execute("SELECT content FROM chat_messages ORDER BY seq")]
        payloads = [
            r[0] for r in conn.execute("SELECT payload::text FROM chat_message_outbox ORDER BY id")
        ]
    return contents, payloads


def _logs(folder: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in folder.glob("chatd*.log"))


def _leaks(haystack: str | bytes) -> list[str]:
    text = haystack.decode(errors="replace") if isinstance(haystack, bytes) else haystack
    return [t for t in TEXTS if t in text]


@pytest.mark.node
@pytest.mark.timeout(150)
async def test_encrypted_chat_across_two_instances_leaves_no_plaintext(
    node: str, database_url: str, vhost: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    amqp = f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    async with open_cluster(database_url, amqp, tmp_path) as cluster:
        # Content logging on: an envelope must still never reach a log line.
        first = await cluster.add(
            CHATD_LOGGING__INCLUDE_CONTENT="true", CHATD_LOGGING__LEVEL="DEBUG"
        )
        second = await cluster.add(
            CHATD_LOGGING__INCLUDE_CONTENT="true", CHATD_LOGGING__LEVEL="DEBUG"
        )
        await trio.to_thread.run_sync(_capture, amqp)
        artifacts = ARTIFACTS / request.node.name
        shutil.rmtree(artifacts, ignore_errors=True)
        result = await run_scenario(
            node,
            "e2e_scenario.mjs",
            {"alice": first.http, "bob": second.http, "artifacts": str(artifacts), "texts": TEXTS},
            seconds=120,
            context=f"screenshots in {artifacts}\n",
        )
        captured = await trio.to_thread.run_sync(_captured, amqp)
        contents, payloads = await trio.to_thread.run_sync(_stored, database_url)
    logs = await trio.to_thread.run_sync(_logs, tmp_path)
    check_pages(result)

    # The server side holds envelopes only: in the database, the outbox, RabbitMQ, the logs.
    assert len(contents) == 3
    for content in contents:
        assert validate_envelope(content) == content
    assert not [leak for blob in contents + payloads for leak in _leaks(blob)]
    assert sum(ALGORITHM in p for p in payloads) >= 9  # 3 rows per message
    message_events = [json.loads(b) for b in captured if b'"content"' in b]
    assert {m["content"] for m in message_events} == set(contents)
    assert not [leak for body in captured for leak in _leaks(body)]
    key_events = [json.loads(b) for b in captured if b'"previousKid"' in b]
    assert any(e["email"] == "bob@example.com" and e["previousKid"] for e in key_events)
    assert "DEBUG" in logs
    assert not _leaks(logs)
    assert not [c for c in contents if json.loads(c)["ct"] in logs]


def check_pages(result: dict[str, Any]) -> None:
    users = result["users"]
    for name in ("alice", "bob", "bobNewDevice"):
        assert users[name]["pageErrors"] == [], name
        assert users[name]["consoleErrors"] == [], name
        assert users[name]["secureContext"] is True
    assert users["bob"]["kid"] != users["bobNewDevice"]["kid"]
    assert result["aliceTitle"].startswith("🔒 bob@example.com")
    assert result["aliceLockShown"] is True
    assert result["bobListPreview"] == "encrypted message"
    # Both sides compute the same safety number from the two keys; a new key changes it.
    assert result["aliceSafety"] == result["bobSafety"]
    assert result["aliceSafetyAfter"] == result["bobNewSafety"] != result["aliceSafety"]
    assert result["aliceWarningBefore"] is False
    assert result["aliceWarning"] == (
        "bob@example.com's key changed: compare the safety number again"
    )

    ok = "ok"
    assert result["aliceBefore"] == [
        {"seq": 1, "text": TEXTS[0], "mine": True, "decrypt": ok},
        {"seq": 2, "text": TEXTS[1], "mine": False, "decrypt": ok},
    ]
    assert result["bobBefore"] == [
        {"seq": 1, "text": TEXTS[0], "mine": False, "decrypt": ok},
        {"seq": 2, "text": TEXTS[1], "mine": True, "decrypt": ok},
    ]
    assert result["aliceAfter"][2] == {"seq": 3, "text": TEXTS[2], "mine": True, "decrypt": ok}
    # A new device has no old private key: the old history says so, the new message reads.
    new = result["bobNewAfter"]
    assert [(m["seq"], m["decrypt"]) for m in new] == [(1, "failed"), (2, "failed"), (3, ok)]
    assert all("could not decrypt" in m["text"] for m in new[:2])
    assert new[2]["text"] == TEXTS[2]
    # The old device still reads the old messages but not one sealed for the new key.
    old = result["bobOldAfter"]
    assert [(m["seq"], m["decrypt"]) for m in old] == [(1, ok), (2, ok), (3, "failed")]
