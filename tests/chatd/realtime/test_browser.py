"""The demo page in a real browser: headless Chromium (Debian's ``chromium``, installed by
scripts/test) driven by playwright-core under Node (tests/node/browser_scenario.mjs runs the
steps and prints what the pages showed; the assertions are here).

Two browser contexts, alice and bob, sign in through the page (the demo token endpoint of the
embedded default) and chat: message, delivered and seen ticks, unread badges, typing, history
scrolling -- over SockJS's websocket transport (SQLite), with bob's WebSocket deleted so that
SockJS falls back to xhr-streaming (PostgreSQL), and over a plain WebSocket. Then: a refused
token, a server that dies mid-chat and comes back, and a stranger who knows the URL of a page's
SockJS session (on every HTTP transport sockjs-client has). Screenshots go to
``test-artifacts/browser/<test>/`` (git-ignored). Each browser test takes a few seconds.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trio

from chatd.auth.keys import ensure_dev_keys, generate_private_key
from chatd.auth.tokens import mint_token
from chatd.config import (
    Config,
    DatabaseConfig,
    LimitsConfig,
    OutboxConfig,
    PresenceConfig,
    ServerConfig,
)
from tests.node_support import NODE_DIR, require_node, run_scenario

from .conftest import ALICE, BOB, CAROL, Chat, chat_config, start_chat

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = "browser_scenario.mjs"
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts" / "browser"
HISTORY = 45  # stored messages carol -> bob: more than two pages of the page's 20
GRACE = 1.0  # [presence] grace_seconds of the served chatd: bob's dot must go grey within +1 s


@pytest.fixture(scope="module")
def node() -> str:
    path = require_node("playwright-core")
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} missing: apt-get install chromium (scripts/test does)")
    return path


def embedded_config(
    tmp_path: Path, database_url: str | None = None, limits: LimitsConfig | None = None
) -> Config:
    """The embedded default (dev keys in the data dir, demo page on, local profiles) on an
    ephemeral port; SQLite unless `database_url` says otherwise."""
    config = Config(
        server=ServerConfig(bind="127.0.0.1:0", data_dir=tmp_path, shutdown_grace=2),
        outbox=OutboxConfig(poll_interval=0.2),
        limits=limits or LimitsConfig(),
        presence=PresenceConfig(grace_seconds=GRACE),
    )
    if database_url is not None:
        config = replace(config, database=DatabaseConfig(url=database_url, connect_timeout=2))
    return config


async def serve_embedded(nursery: trio.Nursery, config: Config) -> Chat:
    private, _, _ = ensure_dev_keys(config.server.data_dir)
    return await start_chat(nursery, config, private.read_bytes())


@pytest.fixture
async def embedded_chat(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Chat]:
    """`chatd serve` with no config (SQLite, dev keys, demo page), on port 0."""
    running = await serve_embedded(nursery, embedded_config(tmp_path))
    async with running.client:
        yield running
    running.scope.cancel()


@pytest.fixture
async def postgres_chat(
    nursery: trio.Nursery, tmp_path: Path, postgres_url: str
) -> AsyncIterator[Chat]:
    """The embedded default on PostgreSQL (an empty schema of this run's database)."""
    from ..conftest import _empty_postgres

    _empty_postgres(postgres_url)
    running = await serve_embedded(nursery, embedded_config(tmp_path, postgres_url))
    async with running.client:
        yield running
    running.scope.cancel()


async def store_history(chat: Chat) -> str:
    """carol's session with bob holding `HISTORY` messages bob has not read."""
    sid = await chat.init(CAROL, BOB)
    for n in range(1, HISTORY + 1):
        await chat.send(sid, f"carol's message {n}", f"history-{n}", caller=CAROL)
    return sid


async def browse(
    node: str, chat: Chat, request: pytest.FixtureRequest, **options: Any
) -> tuple[dict[str, Any], Path]:
    """Run the browser scenario against `chat`; return what it saw and its artifacts dir."""
    artifacts = ARTIFACTS / request.node.name.replace("/", "_")
    shutil.rmtree(artifacts, ignore_errors=True)
    argument = {"http": chat.http, "artifacts": str(artifacts), **options}
    result = await run_scenario(
        node, SCRIPT, argument, seconds=100, context=f"screenshots in {artifacts}\n"
    )
    return result, artifacts


def check_chat(result: dict[str, Any], chat: Chat) -> None:
    """What both pages must have shown, whatever the transport."""
    for name, email in (("alice", ALICE), ("bob", BOB)):
        seen = result["users"][name]
        assert seen["me"] == email
        assert seen["appVisibleBeforeSignIn"] is False
        assert seen["pageErrors"] == []
        assert seen["consoleErrors"] == []
        assert seen["failedRequests"] == []
        assert seen["errorResponses"] == []
    # Nothing is fetched from anywhere but chatd.
    assert result["origins"] == [chat.http]

    # alice's message reached bob's page, which marked it delivered (not yet seen) and showed
    # it unread; opening the chat marked it seen and cleared the badge.
    assert result["aliceAfterDelivered"] == [
        {"seq": 1, "text": "hello bob", "mine": True, "status": "delivered"}
    ]
    assert result["bobUnreadBeforeOpen"] == 1
    assert result["bobAfterOpen"] == [
        {"seq": 1, "text": "hello bob", "mine": False, "status": None}
    ]
    assert result["bobUnreadAfterOpen"] == 0
    assert result["aliceTyping"] == f"{BOB} is typing…"
    assert result["aliceAfterReply"] == [
        {"seq": 1, "text": "hello bob", "mine": True, "status": "seen"},
        {"seq": 2, "text": "hi alice", "mine": False, "status": None},
    ]
    assert result["bobAfterReply"] == [
        {"seq": 1, "text": "hello bob", "mine": False, "status": None},
        {"seq": 2, "text": "hi alice", "mine": True, "status": "seen"},
    ]


async def check_stored(chat: Chat, sid: str) -> None:
    """The ticks the pages showed are the stored state, not a page's guess."""
    stored = sorted(await chat.history(sid), key=lambda m: m["seq"])
    assert [(m["senderEmail"], m["content"], m["delivered"], m["seen"]) for m in stored] == [
        (ALICE, "hello bob", True, True),
        (BOB, "hi alice", True, True),
    ]


def check_presence(result: dict[str, Any]) -> None:
    """Alice's page showed bob online, then offline within the grace period plus a second of
    his closing his page."""
    assert result["aliceSawBobOnline"] is True
    assert result["bobOfflineAfterMs"] <= (GRACE + 1) * 1000
    assert result["aliceDotTitle"].startswith("offline, last seen")


def check_screenshots(result: dict[str, Any], artifacts: Path) -> None:
    for name in ("alice", "bob"):
        shots = [Path(p) for p in result["users"][name]["screenshots"]]
        assert shots
        assert all(p.parent == artifacts for p in shots)
        for shot in shots:
            assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", shot


@pytest.mark.node
@pytest.mark.timeout(120)
async def test_two_users_chat_through_the_demo_page(
    node: str, embedded_chat: Chat, request: pytest.FixtureRequest
) -> None:
    chat = embedded_chat
    await store_history(chat)
    result, artifacts = await browse(
        node, chat, request, history={"peer": CAROL, "count": HISTORY}, presence={"grace": GRACE}
    )
    check_chat(result, chat)
    check_presence(result)
    # SockJS picked its best transport for both.
    assert result["users"]["alice"]["transport"] == "websocket"
    assert result["users"]["bob"]["transport"] == "websocket"
    await check_stored(chat, result["sessionId"])
    # Bob's total counted carol's unread history and alice's new message.
    assert result["bobTotalBeforeOpen"] == HISTORY + 1
    # The first page is the newest 20; scrolling up loaded the rest, in order, once each.
    assert result["historyFirstPage"] == list(range(HISTORY - 19, HISTORY + 1))
    assert result["historyAll"] == list(range(1, HISTORY + 1))
    assert result["bobTotalAtEnd"] == 0
    unread = await chat.client.get("/api/chat/unread", headers=chat.auth(BOB))
    assert unread.json()["total"] == 0  # the badges showed what the server stored
    check_screenshots(result, artifacts)


@pytest.mark.node
@pytest.mark.timeout(120)
async def test_demo_page_without_websocket_falls_back_to_xhr_streaming(
    node: str, postgres_chat: Chat, request: pytest.FixtureRequest
) -> None:
    chat = postgres_chat
    result, artifacts = await browse(node, chat, request, noWebSocket=["bob"])
    assert result["users"]["bob"]["hasWebSocket"] is False
    assert result["users"]["bob"]["transport"] == "xhr-streaming"
    assert result["users"]["alice"]["transport"] == "websocket"
    check_chat(result, chat)
    await check_stored(chat, result["sessionId"])
    check_screenshots(result, artifacts)


@pytest.mark.node
@pytest.mark.timeout(120)
async def test_demo_page_over_a_plain_websocket(
    node: str, embedded_chat: Chat, request: pytest.FixtureRequest
) -> None:
    # ?transport=websocket: STOMP straight over a WebSocket at /ws, no SockJS.
    result, artifacts = await browse(
        node, embedded_chat, request, query="?transport=websocket", presence={"grace": GRACE}
    )
    for name in ("alice", "bob"):
        assert result["users"][name]["transport"] == "raw-websocket"
    check_chat(result, embedded_chat)
    check_presence(result)
    await check_stored(embedded_chat, result["sessionId"])
    check_screenshots(result, artifacts)


@pytest.mark.node
@pytest.mark.timeout(120)
async def test_demo_page_over_a_sockjs_iframe_transport(
    node: str, embedded_chat: Chat, request: pytest.FixtureRequest
) -> None:
    # sockjs-client runs iframe transports inside /ws/iframe.html, which must load the client
    # and bootstrap itself (what browsers without CORS use).
    result, artifacts = await browse(
        node, embedded_chat, request, query="?transports=iframe-eventsource"
    )
    for name in ("alice", "bob"):
        assert result["users"][name]["transport"] == "iframe-eventsource"
    check_chat(result, embedded_chat)
    await check_stored(embedded_chat, result["sessionId"])
    check_screenshots(result, artifacts)


@pytest.mark.node
@pytest.mark.timeout(120)
async def test_a_refused_token_returns_to_the_sign_in_form(
    node: str, embedded_chat: Chat, request: pytest.FixtureRequest
) -> None:
    forged = mint_token(generate_private_key(), ALICE)  # right shape, wrong key
    result, artifacts = await browse(
        node, embedded_chat, request, scenario="refused-token", token=forged
    )
    assert result["signInVisible"] is True
    assert result["appVisible"] is False
    assert result["signInError"] == "the server refused the token: sign in again"
    assert result["storedToken"] is None
    assert result["meAfterSignIn"] == "mallory@example.com"
    assert result["signInErrorAfterSignIn"] == ""
    assert [Path(p).parent for p in result["users"]["mallory"]["screenshots"]] == [artifacts] * 2


BOUND_TRANSPORTS = ["xhr-streaming", "xhr-polling", "eventsource", "htmlfile", "jsonp-polling"]
HTTP_TRANSPORTS = [
    "xhr",
    "xhr_streaming",
    "eventsource",
    "htmlfile",
    "jsonp",
    "xhr_send",
    "jsonp_send",
]


@pytest.mark.node
@pytest.mark.timeout(120)
async def test_a_stranger_with_the_url_cannot_use_a_page_s_sockjs_session(
    node: str, embedded_chat: Chat, request: pytest.FixtureRequest
) -> None:
    # The page authenticates in the CONNECT frame, with no access_token in the SockJS URL:
    # only the session's cookie, which the browser keeps and returns, says who opened it.
    result, _ = await browse(
        node, embedded_chat, request, scenario="bound-session", transports=BOUND_TRANSPORTS
    )
    assert list(result["transports"]) == BOUND_TRANSPORTS
    for transport, seen in result["transports"].items():
        assert (seen["transport"], seen["transportAtEnd"]) == (transport, transport)
        assert seen["pageErrors"] == seen["consoleErrors"] == seen["errorResponses"] == []
        [path] = seen["sockjsSessions"]
        assert seen["strangers"] == {path: dict.fromkeys(HTTP_TRANSPORTS, 404)}, transport
        assert seen["sessionCookies"] == [{"path": path, "httpOnly": True, "sameSite": "Lax"}]
        assert seen["cookieVisibleToScripts"] is False
    stored = sorted(await embedded_chat.history(result["sessionId"]), key=lambda m: m["seq"])
    assert [(m["senderEmail"], m["content"]) for m in stored] == [
        (ALICE, f"over {transport}") for transport in BOUND_TRANSPORTS
    ]


class Lines:
    """The lines a process writes, one at a time."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream, self.buffer = stream, b""

    async def next(self) -> str:
        while b"\n" not in self.buffer:
            chunk = await self.stream.receive_some()
            if not chunk:
                raise AssertionError(f"the browser script ended without a line: {self.buffer!r}")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode()


@pytest.mark.node
@pytest.mark.timeout(120)
async def test_pages_reconnect_after_a_restart_and_miss_nothing(
    node: str, nursery: trio.Nursery, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    config = embedded_config(tmp_path)
    first = await serve_embedded(nursery, config)
    artifacts = ARTIFACTS / request.node.name
    shutil.rmtree(artifacts, ignore_errors=True)
    argument = {"http": first.http, "artifacts": str(artifacts), "scenario": "restart"}
    stderr = tmp_path / "node-stderr.txt"
    with stderr.open("wb") as errors, trio.fail_after(100):
        proc = await trio.lowlevel.open_process(
            [node, str(NODE_DIR / SCRIPT), json.dumps(argument)],
            cwd=NODE_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errors,
        )
        try:
            assert proc.stdin is not None
            assert proc.stdout is not None
            lines = Lines(proc.stdout)
            waiting = json.loads(await lines.next())
            assert waiting.get("waiting") == "restart", waiting.get("fatal", waiting)
            # Gone without a goodbye (a crash, not a drain), back on the same address.
            first.scope.cancel()
            await first.done.wait()
            await first.client.aclose()
            again = replace(config, server=replace(config.server, bind=f"127.0.0.1:{first.port}"))
            second = await serve_embedded(nursery, again)
            async with second.client:
                sent = await second.send(
                    waiting["sessionId"], "while you were away", "rest-1", caller=ALICE
                )
                assert sent["seq"] == 2
                await proc.stdin.send_all(b'{"sent": 2}\n')
                result = json.loads(await lines.next())
                assert "fatal" not in result, (
                    f"{result['fatal']}\nscreenshots in {artifacts}\n"
                    f"stderr: {stderr.read_text()}\nobserved: {json.dumps(result, indent=1)}"
                )
                assert await proc.wait() == 0
                stored = sorted(await second.history(waiting["sessionId"]), key=lambda m: m["seq"])
            second.scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                proc.kill()
                await proc.wait()
    texts = ["before the restart", "while you were away", "after the restart"]
    assert result["aliceAfterRestart"] == [
        {"seq": 1, "text": texts[0], "mine": True, "status": "seen"},
        {"seq": 2, "text": texts[1], "mine": True, "status": "seen"},
        {"seq": 3, "text": texts[2], "mine": False, "status": None},
    ]
    assert result["bobAfterRestart"] == [
        {"seq": 1, "text": texts[0], "mine": False, "status": None},
        {"seq": 2, "text": texts[1], "mine": False, "status": None},
        {"seq": 3, "text": texts[2], "mine": True, "status": "seen"},
    ]
    assert [(m["content"], m["seen"]) for m in stored] == [(t, True) for t in texts]


@pytest.mark.node
@pytest.mark.timeout(120)
async def test_a_refused_send_shows_why_and_stores_nothing(
    node: str, nursery: trio.Nursery, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    config = embedded_config(tmp_path, limits=LimitsConfig(max_content_length=20))
    chat = await serve_embedded(nursery, config)
    async with chat.client:
        too_long = "x" * 30
        result, _ = await browse(node, chat, request, scenario="refused-send", tooLong=too_long)
        reason = "content is 30 characters long; the limit is 20"
        assert result["chatError"].endswith(reason)
        assert result["failedTitle"].endswith(reason)
        assert result["aliceMessages"] == [
            {"seq": None, "text": too_long, "mine": True, "status": "failed"},
            {"seq": 1, "text": "short", "mine": True, "status": "sent"},
        ]
        stored = await chat.history(result["sessionId"])
        assert [m["content"] for m in stored] == ["short"]
    chat.scope.cancel()


# -- the wiring, without a browser ---------------------------------------------------------


async def test_embedded_default_serves_the_page_and_mints_verifiable_tokens(
    embedded_chat: Chat,
) -> None:
    chat = embedded_chat
    assert (await chat.client.get("/")).status_code == 200
    answer = await chat.client.post("/demo/token", json={"email": ALICE})
    assert answer.status_code == 200, answer.text
    token = answer.json()["token"]
    unread = await chat.client.get("/api/chat/unread", headers={"Authorization": f"Bearer {token}"})
    assert unread.status_code == 200, unread.text


async def test_a_configured_key_source_never_mints_demo_tokens(sqlite_chat: Chat) -> None:
    # sqlite_chat verifies with a public key file (as production does), demo page still on.
    chat = sqlite_chat
    assert (await chat.client.get("/")).status_code == 200
    answer = await chat.client.post("/demo/token", json={"email": ALICE})
    assert answer.status_code == 404, answer.text
    assert answer.json()["status"] == "NOT_FOUND"


async def test_sockjs_iframe_loads_the_vendored_client_with_the_demo_page_off(
    nursery: trio.Nursery, tmp_path: Path, key_pair: tuple[bytes, Path]
) -> None:
    config = chat_config(
        tmp_path, f"sqlite:///{tmp_path / 'chat.sqlite3'}", key_pair[1], demo_page=False
    )
    chat = await start_chat(nursery, config, key_pair[0])
    async with chat.client:
        assert (await chat.client.get("/")).status_code == 404
        iframe = await chat.client.get("/ws/iframe.html")
        assert iframe.status_code == 200
        [src] = re.findall(r'<script src="([^"]+)"', iframe.text)
        library = await chat.client.get(src)
        assert library.status_code == 200
        assert library.headers["content-type"].startswith("text/javascript")
    chat.scope.cancel()
