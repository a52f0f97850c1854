"""A browser-side client against chatd's `/ws`: @stomp/stompjs 7.5.0 under Node
(tests/node/chat_scenario.mjs runs the steps and prints what it saw; assertions are here)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.node_support import require_node, run_scenario

from .conftest import ALICE, BOB, CAROL, Chat

SCRIPT = "chat_scenario.mjs"

pytestmark = [pytest.mark.node, pytest.mark.timeout(60)]


@pytest.fixture(scope="module")
def node() -> str:
    return require_node("@stomp/stompjs")


async def scenario(node: str, chat: Chat, **options: Any) -> dict[str, Any]:
    return await run_scenario(node, SCRIPT, {"http": chat.http, **options}, seconds=40)


async def test_two_stompjs_users_chat(node: str, chat: Chat) -> None:
    sid = await chat.init()
    result = await scenario(
        node,
        chat,
        scenario="chat",
        sessionId=sid,
        tokens={"alice": chat.token(ALICE), "bob": chat.token(BOB)},
    )
    for seen in result["clients"].values():
        assert seen["subprotocol"] == "v12.stomp"
        assert seen["stompErrors"] == []
    assert result["clients"]["alice"]["connected"]["headers"]["user-name"] == ALICE
    assert result["clients"]["bob"]["connected"]["headers"]["user-name"] == BOB

    ack = result["ack"]
    assert ack["headers"]["event"] == "message"
    assert ack["headers"]["content-type"] == "application/json"
    assert (ack["body"]["clientMessageId"], ack["body"]["seq"]) == ("js-1", 1)
    assert result["duplicateAck"]["body"]["messageId"] == ack["body"]["messageId"]
    assert [m["body"]["seq"] for m in result["bobTopic"]] == [1, 2]
    assert [m["body"]["seq"] for m in result["bobQueue"]] == [1, 2]
    assert result["bobTopic"][0]["body"] == ack["body"]
    assert result["restStatus"] in (200, 201)
    assert result["typing"]["headers"]["event"] == "typing"
    assert result["typing"]["body"] == {"sessionId": sid, "email": ALICE}
    receipt = result["receipt"]
    assert receipt["headers"]["event"] == "receipt"
    assert (
        receipt["body"]["readerEmail"],
        receipt["body"]["status"],
        receipt["body"]["upToSeq"],
    ) == (BOB, "seen", 2)
    history = await chat.history(sid)
    assert sorted(m["seq"] for m in history) == [1, 2]  # the duplicate stored nothing


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no token", "unauthenticated"),
        ("bad token", "unauthenticated"),
        ("foreign session", "cannot subscribe to /topic/session.{foreign}"),
        ("foreign user queue", "cannot subscribe to /user/bob@example.com/queue/messages"),
        ("send to topic", "cannot send to /topic/session.{foreign}"),
    ],
)
async def test_stompjs_refusals_are_error_then_close(
    node: str, sqlite_chat: Chat, case: str, message: str
) -> None:
    chat = sqlite_chat
    foreign = await chat.init(BOB, CAROL)
    options: dict[str, Any] = {"token": chat.token(ALICE), "subscribe": None, "send": None}
    if case == "no token":
        options["token"] = None
    elif case == "bad token":
        options["token"] = "x.y.z"
    elif case == "foreign session":
        options["subscribe"] = f"/topic/session.{foreign}"
    elif case == "foreign user queue":
        options["subscribe"] = "/user/bob@example.com/queue/messages"
    else:
        options["send"] = f"/topic/session.{foreign}"
    result = await scenario(node, chat, scenario="refused", **options)
    seen = result["clients"]["peer"]
    [error] = seen["stompErrors"]
    assert error["headers"]["message"] == message.replace("{foreign}", foreign)
    assert len(seen["socketCloses"]) == 1
    assert seen["socketCloses"][0]["code"] == 1000
