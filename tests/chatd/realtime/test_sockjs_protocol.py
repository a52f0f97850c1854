"""The SockJS protocol over raw HTTP against a running chatd (the sockjs-protocol 0.3 test
suite's rules, with STOMP frames in place of its echo service): info, iframe, every session
transport, framing, CORS and cache headers, 404/405/500 answers, one receiver per session,
session timeouts, streaming response limits, and an HTTP/1.0 client on a raw socket.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest
import trio
import trio_websocket

from chatd.auth.tokens import mint_token

from .conftest import ALICE, BOB, Chat, chat_config, start_chat
from .sockjs_support import (
    DISCONNECT_DELAY,
    HEARTBEAT,
    NO_CACHE,
    assert_cors,
    connect_frame,
    open_connected,
    receipt_frame,
    session_url,
    sockjs_chat_fixture,  # noqa: F401 - `chat` here: SockJS-tuned
    stomp_frames,
    xhr_send,
)

pytestmark = pytest.mark.timeout(30)


# -- static URLs ----------------------------------------------------------------------------


async def test_greeting_and_info_headers(chat: Chat) -> None:
    greeting = await chat.client.get("/ws/")
    assert (greeting.status_code, greeting.text) == (200, "Welcome to SockJS!\n")
    answer = await chat.client.get("/ws/info")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json; charset=UTF-8"
    assert answer.headers["cache-control"] == NO_CACHE
    assert "set-cookie" not in answer.headers
    assert_cors(answer)


async def test_info_fields_and_entropy(chat: Chat) -> None:
    one = (await chat.client.get("/ws/info")).json()
    two = (await chat.client.get("/ws/info")).json()
    assert {k: one[k] for k in ("websocket", "origins", "cookie_needed")} == {
        "websocket": True,
        "origins": ["*:*"],
        "cookie_needed": False,
    }
    assert isinstance(one["entropy"], int)
    assert 0 <= one["entropy"] < 2**32
    assert one["entropy"] != two["entropy"]


@pytest.mark.parametrize(
    ("path", "methods"),
    [
        ("/ws/info", "OPTIONS, GET"),
        ("/ws/abc/abc/xhr", "OPTIONS, POST"),
        ("/ws/abc/abc/xhr_send", "OPTIONS, POST"),
        ("/ws/abc/abc/xhr_streaming", "OPTIONS, POST"),
    ],
)
@pytest.mark.parametrize("origin", [None, "http://example.test", "null"])
async def test_options_preflight_is_cacheable(
    chat: Chat, path: str, methods: str, origin: str | None
) -> None:
    headers = {"Origin": origin} if origin else {}
    answer = await chat.client.options(path, headers=headers)
    assert answer.status_code == 204
    assert answer.content == b""
    assert "public" in answer.headers["cache-control"]
    assert re.search(r"max-age=[1-9][0-9]{6}", answer.headers["cache-control"])
    assert answer.headers["expires"]
    assert int(answer.headers["access-control-max-age"]) > 1_000_000
    assert answer.headers["access-control-allow-methods"] == methods
    assert_cors(answer, origin)


async def test_origin_null_is_echoed_never_star_with_credentials(chat: Chat) -> None:
    # file:// pages and sandboxed iframes send `Origin: null`; `*` with credentials would make
    # browsers refuse every XHR transport for them.
    for answer in (
        await chat.client.options("/ws/info", headers={"Origin": "null"}),
        await chat.client.get("/ws/info", headers={"Origin": "null"}),
        await chat.client.post(session_url() + "/xhr", headers={"Origin": "null"}),
    ):
        assert answer.headers["access-control-allow-origin"] == "null"
        assert answer.headers["access-control-allow-credentials"] == "true"


async def test_iframe_page_is_cacheable_with_etag(chat: Chat) -> None:
    for name in (
        "iframe.html",
        "iframe-a.html",
        "iframe-0.1.2.html",
        "iframe-0.1.2abc-dirty.2144.html",
    ):
        answer = await chat.client.get(f"/ws/{name}", params={"t": "1234"})
        assert answer.status_code == 200, name
        assert answer.headers["content-type"] == "text/html; charset=UTF-8"
        assert re.search(r"public.*max-age=[1-9][0-9]{6}", answer.headers["cache-control"])
        assert answer.headers["expires"]
        assert "last-modified" not in answer.headers
        assert answer.text.startswith("<!DOCTYPE html>")
        assert "SockJS.bootstrap_iframe()" in answer.text
        assert re.search(r'<script src="/[^"]+"></script>', answer.text)
    etag = (await chat.client.get("/ws/iframe.html")).headers["etag"]
    assert etag == (await chat.client.get("/ws/iframe.html")).headers["etag"]
    cached = await chat.client.get("/ws/iframe.html", headers={"If-None-Match": etag})
    assert cached.status_code == 304
    assert cached.content == b""
    assert "content-type" not in cached.headers
    for bad in ("iframe.htm", "iframe", "IFRAME.HTML", "iframe.HTML", "iframe.xml"):
        assert (await chat.client.get(f"/ws/{bad}")).status_code == 404, bad
    assert (await chat.client.get("/ws/iframe-/.html")).status_code == 404


#: The iframe page's layout in the SockJS protocol suite and sockjs-node now: the client's
#: script first, then one that bootstraps it (no `_sockjs_onload` hook for the client to call).
IFRAME_PAGE = re.compile(
    r"""^<!DOCTYPE html>\n<html>\n<head>\n.*
  <script src="(?P<sockjs_url>[^"]+)"></script>
  <script>
    document\.domain = document\.domain;
    SockJS\.bootstrap_iframe\(\);
  </script>
</head>
<body>.*</body>
</html>$""",
    re.DOTALL,
)


async def test_iframe_page_has_the_current_sockjs_layout(chat: Chat) -> None:
    for name in (
        "iframe.html",
        "iframe-a.html",
        "iframe-0.1.2.html",
        "iframe-0.1.2abc-dirty.2144.html",
    ):
        for params in ({}, {"t": "1234"}):
            answer = await chat.client.get(f"/ws/{name}", params=params)
            assert answer.status_code == 200, name
            page = IFRAME_PAGE.match(answer.text)
            assert page is not None, answer.text
            library = await chat.client.get(page["sockjs_url"])
            assert library.status_code == 200
            etag = answer.headers["etag"]
            cached = await chat.client.get(
                f"/ws/{name}", params=params, headers={"If-None-Match": etag}
            )
            assert (cached.status_code, cached.content) == (304, b"")


async def test_info_is_never_cached(chat: Chat) -> None:
    answer = await chat.client.get("/ws/info")
    assert answer.headers["cache-control"] == (
        "no-store, no-cache, no-transform, must-revalidate, max-age=0"
    )


@pytest.mark.parametrize(
    "path",
    [
        "/ws//xhr",
        "/ws//",
        "/ws///",
        "/ws//info",
        "/ws//iframe.html",
        "/ws/a/a//xhr",
        "/ws//a/xhr",
        "/ws/a//xhr_send",
        "/ws//websocket",
    ],
)
async def test_paths_with_empty_segments_are_404_not_redirects(chat: Chat, path: str) -> None:
    for method in ("GET", "POST"):
        answer = await chat.client.request(method, path)
        assert answer.status_code == 404, (method, path, answer.headers.get("location"))
        assert answer.json()["status"] == "NOT_FOUND"


# -- session URLs and errors ------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["/a./a", "/a/a.", "/./.", "//a", "/a//"])
async def test_invalid_session_paths_are_404(chat: Chat, suffix: str) -> None:
    for method in ("GET", "POST"):
        answer = await chat.client.request(method, "/ws" + suffix + "/xhr")
        assert answer.status_code == 404, (method, suffix)


async def test_unknown_transport_is_404_and_wrong_method_405(chat: Chat) -> None:
    assert (await chat.client.post("/ws/a/a/nonsense")).status_code == 404
    for path, allowed in (
        ("/ws/a/a/xhr", "OPTIONS, POST"),
        ("/ws/a/a/eventsource", "OPTIONS, GET"),
    ):
        wrong = "GET" if allowed.endswith("POST") else "POST"
        answer = await chat.client.request(wrong, path)
        assert answer.status_code == 405
        assert answer.headers["allow"] == allowed
        assert answer.content == b""
        assert "content-type" not in answer.headers


async def test_websocket_url_refuses_plain_http(chat: Chat) -> None:
    plain = await chat.client.get("/ws/0/0/websocket")
    assert plain.status_code == 400
    assert 'Can "Upgrade" only to "WebSocket".' in plain.text
    proxied = await chat.client.get(
        "/ws/0/0/websocket", headers={"Upgrade": "WebSocket", "Connection": "close"}
    )
    assert proxied.status_code == 400
    assert '"Connection" must be "Upgrade".' in proxied.text
    posted = await chat.client.post("/ws/0/0/websocket")
    assert posted.status_code == 405
    assert posted.headers["allow"] == "GET"
    assert posted.content == b""


# -- xhr polling --------------------------------------------------------------------------------


async def test_xhr_polling_carries_stomp(chat: Chat) -> None:
    url = session_url()
    opened = await chat.client.post(url + "/xhr", headers={"Origin": "http://example.test"})
    assert (opened.status_code, opened.text) == (200, "o\n")
    assert opened.headers["content-type"] == "application/javascript; charset=UTF-8"
    assert opened.headers["cache-control"] == NO_CACHE
    assert_cors(opened, "http://example.test")

    sent = await xhr_send(chat.client, url, connect_frame(chat.token(ALICE)), receipt_frame("r-1"))
    assert sent.status_code == 204
    assert sent.content == b""
    assert sent.headers["content-type"] == "text/plain; charset=UTF-8"
    assert sent.headers["cache-control"] == NO_CACHE
    assert_cors(sent)

    # The server id is ignored: the session is found by its id alone (with the opener's
    # cookie, which is scoped to the URL it was set on: sockjs-client never changes it).
    cookie = {"Cookie": f"chatd_sockjs={chat.client.cookies['chatd_sockjs']}"}
    polled = await chat.client.post(url.replace("/000/", "/999/") + "/xhr", headers=cookie)
    assert polled.text.endswith("\n")
    frames = stomp_frames(polled.text.rstrip("\n"))
    while len(frames) < 2:
        frames += stomp_frames((await chat.client.post(url + "/xhr")).text.rstrip("\n"))
    assert frames[0].startswith("CONNECTED\n")
    assert frames[1].startswith("RECEIPT\n")
    assert "receipt-id:r-1" in frames[1]
    scraped = (await chat.client.get("/metrics")).text
    assert "\nchatd_sockjs_sessions_open 1.0\n" in scraped


async def test_xhr_send_errors(chat: Chat) -> None:
    url = await open_connected(chat)
    broken = await chat.client.post(url + "/xhr_send", content='["x')
    assert broken.status_code == 500
    assert "Broken JSON encoding." in broken.text
    empty = await chat.client.post(url + "/xhr_send", content="")
    assert empty.status_code == 500
    assert "Payload expected." in empty.text
    not_strings = await chat.client.post(url + "/xhr_send", content="[1, 2]")
    assert not_strings.status_code == 500
    assert "Broken JSON encoding." in not_strings.text
    unknown = await xhr_send(chat.client, session_url(), receipt_frame("x"))
    assert unknown.status_code == 404
    # The session survived the bad requests.
    for content_type in ("text/plain", "application/json", "application/xml", "T"):
        answer = await chat.client.post(
            url + "/xhr_send",
            content=json.dumps([receipt_frame(content_type)]),
            headers={"Content-Type": content_type},
        )
        assert answer.status_code == 204
    seen: list[str] = []
    while len(seen) < 4:
        seen += stomp_frames((await chat.client.post(url + "/xhr")).text.rstrip("\n"))
    assert all(f.startswith("RECEIPT\n") for f in seen)


async def test_access_control_request_headers_are_echoed(chat: Chat) -> None:
    asked = await chat.client.post(
        session_url() + "/xhr", headers={"Access-Control-Request-Headers": "a, b, c"}
    )
    assert asked.headers["access-control-allow-headers"] == "a, b, c"
    plain = await chat.client.post(session_url() + "/xhr")
    assert "access-control-allow-headers" not in plain.headers


async def test_idle_poll_gets_a_heartbeat(chat: Chat) -> None:
    url = await open_connected(chat)
    start = trio.current_time()
    answer = await chat.client.post(url + "/xhr")
    assert answer.text == "h\n"
    assert trio.current_time() - start >= HEARTBEAT * 0.9


async def test_second_receiver_is_refused(chat: Chat) -> None:
    url = await open_connected(chat)
    answers: list[str] = []

    async def poll() -> None:
        answers.append((await chat.client.post(url + "/xhr")).text)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(poll)
        await trio.sleep(0.1)
        nursery.start_soon(poll)
    # Whichever came second was told; the first got the heart-beat after waiting.
    assert sorted(answers) == ['c[2010,"Another connection still open"]\n', "h\n"]


async def until_forgotten(chat: Chat, url: str) -> float:
    """Send to `url` until the server has forgotten the session (404); how long that took.
    Sends do not keep a session alive, so this waits out the disconnect delay."""
    start = trio.current_time()
    with trio.fail_after(DISCONNECT_DELAY * 10):
        while (await xhr_send(chat.client, url, receipt_frame("x"))).status_code != 404:  # noqa: ASYNC110
            await trio.sleep(0.05)
    return trio.current_time() - start


async def test_closed_session_answers_go_away_until_forgotten(chat: Chat) -> None:
    url = session_url()
    assert (await chat.client.post(url + "/xhr")).text == "o\n"
    await xhr_send(chat.client, url, connect_frame(None))  # no token: ERROR, then close
    [error] = stomp_frames((await chat.client.post(url + "/xhr")).text.rstrip("\n"))
    assert error.startswith("ERROR\n")
    assert "message:unauthenticated" in error
    for _ in range(2):
        assert (await chat.client.post(url + "/xhr")).text == 'c[3000,"Go away!"]\n'
    # Sends to a closed session are accepted and dropped.
    assert (await xhr_send(chat.client, url, receipt_frame("late"))).status_code == 204
    await until_forgotten(chat, url)
    assert (await chat.client.post(url + "/xhr")).text == "o\n"  # a new session


async def test_session_without_receiver_times_out(chat: Chat) -> None:
    url = await open_connected(chat)
    assert (await xhr_send(chat.client, url, receipt_frame("kept"))).status_code == 204
    # Closed and forgotten: sends are refused and a poll starts a new session.
    took = await until_forgotten(chat, url)
    assert took >= DISCONNECT_DELAY * 0.9
    assert (await chat.client.post(url + "/xhr")).text == "o\n"


async def test_receiver_keeps_the_session_alive(chat: Chat) -> None:
    url = await open_connected(chat)
    for _ in range(3):  # polls back to back, each longer than the disconnect delay
        assert (await chat.client.post(url + "/xhr")).text == "h\n"
    assert (await xhr_send(chat.client, url, receipt_frame("alive"))).status_code == 204
    [receipt] = stomp_frames((await chat.client.post(url + "/xhr")).text.rstrip("\n"))
    assert "receipt-id:alive" in receipt


# -- configuration ------------------------------------------------------------------------------


async def test_sockjs_can_be_turned_off(
    nursery: trio.Nursery, tmp_path: Path, key_pair: tuple[bytes, Path]
) -> None:
    url = f"sqlite:///{tmp_path / 'chat.sqlite3'}"
    off = await start_chat(
        nursery, chat_config(tmp_path / "off", url, key_pair[1], sockjs_enabled=False), key_pair[0]
    )
    no_ws = await start_chat(
        nursery,
        chat_config(tmp_path / "no-ws", url, key_pair[1], sockjs_websocket=False),
        key_pair[0],
    )
    async with off.client, no_ws.client:
        assert (await off.client.get("/ws/info")).status_code == 404
        assert (await off.client.post(session_url() + "/xhr")).status_code == 404
        async with trio_websocket.open_websocket_url(off.ws_url, subprotocols=["v12.stomp"]) as ws:
            assert ws.subprotocol == "v12.stomp"  # plain STOMP over WebSocket still works

        assert (await no_ws.client.get("/ws/info")).json()["websocket"] is False
        with pytest.raises(trio_websocket.HandshakeError):
            async with trio_websocket.open_websocket_url(
                no_ws.ws_url + session_url().removeprefix("/ws") + "/websocket"
            ):
                pass
        assert (await no_ws.client.post(session_url() + "/xhr")).text == "o\n"
    off.scope.cancel()
    no_ws.scope.cancel()


async def test_session_opened_with_a_query_token_needs_it_on_every_request(chat: Chat) -> None:
    url = session_url()
    mine = {"access_token": chat.token(ALICE)}
    theirs = {"access_token": chat.token(BOB)}
    assert (await chat.client.post(url + "/xhr", params=mine)).text == "o\n"
    chat.client.cookies.clear()  # a client without a cookie jar (sockjs-client under Node)
    connect = json.dumps([connect_frame(None)])  # the token in the query authenticates
    for params in ({}, theirs):  # knowing the session id is not enough
        assert (
            await chat.client.post(url + "/xhr_send", content=connect, params=params)
        ).status_code == 404
        assert (await chat.client.post(url + "/xhr", params=params)).status_code == 404
    assert (
        await chat.client.post(url + "/xhr_send", content=connect, params=mine)
    ).status_code == 204
    [connected] = stomp_frames((await chat.client.post(url + "/xhr", params=mine)).text.strip())
    assert f"user-name:{ALICE}" in connected


async def test_session_table_is_bounded(
    nursery: trio.Nursery, tmp_path: Path, key_pair: tuple[bytes, Path]
) -> None:
    url = f"sqlite:///{tmp_path / 'chat.sqlite3'}"
    chat = await start_chat(
        nursery,
        chat_config(tmp_path, url, key_pair[1], sockjs_max_sessions=2, sockjs_disconnect_delay=0.3),
        key_pair[0],
    )
    async with chat.client:
        first, second = session_url(), session_url()
        for opened in (first, second):
            assert (await chat.client.post(opened + "/xhr")).text == "o\n"
        refused = await chat.client.post(session_url() + "/xhr")
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "5"
        assert refused.json()["status"] == "SERVICE_UNAVAILABLE"
        # Existing sessions still work, and room comes back as sessions end.
        assert (await xhr_send(chat.client, first, connect_frame(None))).status_code == 204
        await trio.sleep(1.0)  # both closed and forgotten (no receiver)
        assert (await chat.client.post(session_url() + "/xhr")).text == "o\n"
    chat.scope.cancel()


async def test_cookie_needed_sets_jsessionid_on_session_urls(
    nursery: trio.Nursery, tmp_path: Path, key_pair: tuple[bytes, Path]
) -> None:
    url = f"sqlite:///{tmp_path / 'chat.sqlite3'}"
    sticky = await start_chat(
        nursery,
        chat_config(tmp_path / "sticky", url, key_pair[1], sockjs_cookie_needed=True),
        key_pair[0],
    )
    async with sticky.client:
        info = await sticky.client.get("/ws/info")
        assert info.json()["cookie_needed"] is True
        assert "set-cookie" not in info.headers
        opened = await sticky.client.post(session_url() + "/xhr")
        [jsessionid] = jsessionid_cookies(opened)
        assert jsessionid.split(";")[0] == "JSESSIONID=dummy"
        assert "path=/;" in jsessionid.lower() + ";"
        sticky.client.cookies.clear()
        sticky.client.cookies.set("JSESSIONID", "abcdef")  # a balancer's own value is kept
        url_ = session_url()
        echoed = await sticky.client.post(url_ + "/xhr")
        assert [c.split(";")[0] for c in jsessionid_cookies(echoed)] == ["JSESSIONID=abcdef"]
        sent = await sticky.client.post(url_ + "/xhr_send", content=json.dumps(["x"]))
        assert [c.split(";")[0] for c in jsessionid_cookies(sent)] == ["JSESSIONID=abcdef"]
    sticky.scope.cancel()


def jsessionid_cookies(response: httpx.Response) -> list[str]:
    return [c for c in response.headers.get_list("set-cookie") if c.startswith("JSESSIONID=")]


async def test_no_jsessionid_by_default(chat: Chat) -> None:
    assert (await chat.client.get("/ws/info")).json()["cookie_needed"] is False
    assert jsessionid_cookies(await chat.client.post(session_url() + "/xhr")) == []


async def test_expiring_token_closes_the_sockjs_session(chat: Chat) -> None:
    # Expired 28 s ago: still inside the 30 s leeway for two seconds (half a second was too
    # short for a loaded CI machine to get from minting to CONNECT).
    token = mint_token(chat.private_key, ALICE, ttl=-28)
    url = session_url()
    assert (await chat.client.post(url + "/xhr")).text == "o\n"
    await xhr_send(chat.client, url, connect_frame(token))
    frames: list[str] = []
    with trio.fail_after(15):
        while not (text := (await chat.client.post(url + "/xhr")).text).startswith("c"):
            frames += stomp_frames(text.rstrip("\n")) if text.startswith("a") else []
    assert frames[0].startswith("CONNECTED\n")
    assert frames[-1].startswith("ERROR\n")
    assert "message:credentials expired" in frames[-1]
    assert text == 'c[3000,"Go away!"]\n'
