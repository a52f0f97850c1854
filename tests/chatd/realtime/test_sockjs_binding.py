"""Only the client that opened a SockJS session may use it, however it authenticates.

A session URL is not a secret (proxies' logs, browser history, Referer headers). A session
opened with ``?access_token`` is bound to that token; every HTTP-transport session is also
bound to a random secret the server sets as a cookie on the opening response. A stranger who
knows the URL gets 404 on every transport, as for an unknown session; the opener carries on.
(A real browser running sockjs-client is in test_browser.py.)
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from http.cookies import SimpleCookie

import httpx
import pytest
import trio
import trio_websocket

from .conftest import ALICE, BOB, Chat
from .sockjs_support import (
    NUL,
    connect_frame,
    session_url,
    sockjs_chat_fixture,  # noqa: F401 - `chat` here: SockJS-tuned
    stomp_frames,
    xhr_send,
)

pytestmark = pytest.mark.timeout(30)


def send_frame(sid: str, content: str) -> str:
    """A chat.send of `content`, with a receipt (answered once the message is stored)."""
    body = json.dumps({"sessionId": sid, "content": content, "clientMessageId": content})
    return (
        f"SEND\ndestination:/app/chat.send\ncontent-type:application/json\n"
        f"receipt:{content}\n\n{body}{NUL}"
    )


@pytest.fixture
async def stranger(chat: Chat) -> AsyncIterator[httpx.AsyncClient]:
    """Somebody with no cookie of the opener's (a fresh cookie jar)."""
    async with httpx.AsyncClient(base_url=chat.http, timeout=5) as client:
        yield client


async def try_every_transport(
    client: httpx.AsyncClient, url: str, frame: str, params: dict[str, str] | None = None
) -> dict[str, int]:
    """The status of one request of each HTTP transport on the session `url`."""
    params = params or {}
    payload = json.dumps([frame])
    statuses: dict[str, int] = {}
    for transport, method in (
        ("xhr", "POST"),
        ("xhr_streaming", "POST"),
        ("eventsource", "GET"),
        ("htmlfile", "GET"),
        ("jsonp", "GET"),
    ):
        query = params | ({"c": "cb"} if transport in ("htmlfile", "jsonp") else {})
        async with client.stream(method, f"{url}/{transport}", params=query) as answer:
            statuses[transport] = answer.status_code
    answer = await client.post(url + "/xhr_send", content=payload, params=params)
    statuses["xhr_send"] = answer.status_code
    answer = await client.post(url + "/jsonp_send", data={"d": payload}, params=params)
    statuses["jsonp_send"] = answer.status_code
    return statuses


async def test_a_stranger_with_the_url_of_a_connect_authenticated_session_is_refused(
    chat: Chat, stranger: httpx.AsyncClient
) -> None:
    sid = await chat.init(ALICE, BOB)
    url = session_url()
    # alice: no token in the URL, the token in the CONNECT frame (docs/architecture.md,
    # "Identity and authentication").
    opened = await chat.client.post(url + "/xhr")
    assert opened.text == "o\n"
    subscribe = f"SUBSCRIBE\nid:1\ndestination:/user/queue/messages\nreceipt:r1\n\n{NUL}"
    assert (
        await xhr_send(chat.client, url, connect_frame(chat.token(ALICE)), subscribe)
    ).status_code == 204
    frames = stomp_frames((await chat.client.post(url + "/xhr")).text.strip())
    assert frames[0].startswith("CONNECTED\n")
    if len(frames) == 1:
        frames += stomp_frames((await chat.client.post(url + "/xhr")).text.strip())
    assert frames[1].startswith("RECEIPT\n")
    await chat.send(sid, "secret for alice", "bob-1", caller=BOB)

    # Without alice's cookie, with no token or another user's: 404 on every transport.
    for params in ({}, {"access_token": chat.token(BOB)}):
        statuses = await try_every_transport(stranger, url, send_frame(sid, "as alice"), params)
        assert statuses == dict.fromkeys(statuses, 404), statuses
        assert len(statuses) == 7

    # alice still receives what was meant for her, and still speaks as herself.
    with trio.fail_after(10):
        while "secret for alice" not in (text := (await chat.client.post(url + "/xhr")).text):
            assert not text.startswith("c"), text
    assert (await xhr_send(chat.client, url, send_frame(sid, "from alice"))).status_code == 204
    with trio.fail_after(10):
        while "receipt-id:from alice" not in (text := (await chat.client.post(url + "/xhr")).text):
            assert not text.startswith("c"), text
    stored = await chat.history(sid)
    assert sorted((m["senderEmail"], m["content"]) for m in stored) == [
        (ALICE, "from alice"),
        (BOB, "secret for alice"),
    ]


async def test_the_opening_response_sets_a_cookie_scoped_to_the_session(chat: Chat) -> None:
    url = session_url()
    opened = await chat.client.post(url + "/xhr")
    [header] = opened.headers.get_list("set-cookie")
    cookie = SimpleCookie(header)["chatd_sockjs"]
    assert len(cookie.value) >= 40  # 32 random bytes, base64
    assert cookie["path"] == url
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Lax"
    assert not cookie["secure"]  # plain http here: a Secure cookie would never come back
    # Set once: later requests of the session carry it, and are not given another.
    assert "set-cookie" not in (await xhr_send(chat.client, url, connect_frame(None))).headers
    assert "set-cookie" not in (await chat.client.post(url + "/xhr")).headers
    # Two sessions, two secrets.
    other = await chat.client.post(session_url() + "/xhr")
    assert SimpleCookie(other.headers["set-cookie"])["chatd_sockjs"].value != cookie.value


async def test_an_https_page_gets_a_cookie_usable_cross_site(chat: Chat) -> None:
    # The page is on https (so the browser reached us over https, TLS ending at a proxy in
    # front): SameSite=None lets a cross-site page's XHRs carry it, and needs Secure.
    opened = await chat.client.post(
        session_url() + "/xhr", headers={"Origin": "https://app.example"}
    )
    cookie = SimpleCookie(opened.headers["set-cookie"])["chatd_sockjs"]
    assert (cookie["samesite"], cookie["secure"], cookie["httponly"]) == ("None", True, True)


async def test_a_cookie_of_another_session_is_refused(
    chat: Chat, stranger: httpx.AsyncClient
) -> None:
    mine, theirs = session_url(), session_url()
    assert (await chat.client.post(theirs + "/xhr")).text == "o\n"
    opened = await stranger.post(mine + "/xhr")
    assert opened.text == "o\n"
    value = SimpleCookie(opened.headers["set-cookie"])["chatd_sockjs"].value
    # The stranger's own secret, sent on the other session's URL.
    forged = {"Cookie": f"chatd_sockjs={value}"}
    assert (await stranger.post(theirs + "/xhr", headers=forged)).status_code == 404
    assert (
        await stranger.post(theirs + "/xhr_send", content='["x"]', headers=forged)
    ).status_code == 404


async def test_a_websocket_session_is_out_of_reach_of_the_http_transports(
    chat: Chat, stranger: httpx.AsyncClient
) -> None:
    url = session_url()
    async with trio_websocket.open_websocket_url(
        chat.ws_url + url.removeprefix("/ws") + "/websocket"
    ) as ws:
        assert await ws.get_message() == "o"
        await ws.send_message(json.dumps([connect_frame(chat.token(ALICE))]))
        [connected] = stomp_frames(await ws.get_message())
        assert connected.startswith("CONNECTED\n")
        # The same id over HTTP is another, new session: nothing of alice's comes with it.
        assert (await stranger.post(url + "/xhr")).text == "o\n"
        assert (
            await xhr_send(stranger, url, f"SEND\ndestination:/app/ping\n\n{{}}{NUL}")
        ).status_code == 204
        error = stomp_frames((await stranger.post(url + "/xhr")).text.strip())
        assert error[0].startswith("ERROR\n")
        assert "message:not connected" in error[0]  # its own STOMP session, not alice's
        await ws.send_message(json.dumps([f"SEND\ndestination:/app/ping\nreceipt:p\n\n{{}}{NUL}"]))
        [receipt] = stomp_frames(await ws.get_message())
        assert receipt.startswith("RECEIPT\n")
