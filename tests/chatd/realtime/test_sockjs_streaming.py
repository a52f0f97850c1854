"""SockJS streaming and callback transports over raw HTTP against a running chatd:
xhr_streaming, eventsource, htmlfile, jsonp/jsonp_send, the websocket transport, streaming
response limits (nothing lost across the reconnect), aborted requests, JSON escaping, and an
HTTP/1.0 client on a raw socket.
"""

from __future__ import annotations

import json
from functools import partial

import httpx
import pytest
import trio
import trio_websocket
from quart_trio import QuartTrio

from chatd.config import Config, ServerConfig
from chatd.http.server import serve_http
from chatd.http.sockjs_routes import install_sockjs
from stomp.trio import BrokerRuntime

from .conftest import ALICE, Chat
from .sockjs_support import (
    NO_CACHE,
    RESPONSE_LIMIT,
    Body,
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
PRELUDE = "h" * 2048


async def test_xhr_streaming(chat: Chat) -> None:
    url = session_url()
    async with chat.client.stream(
        "POST", url + "/xhr_streaming", headers={"Origin": "http://example.test"}
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/javascript; charset=UTF-8"
        assert response.headers["cache-control"] == NO_CACHE
        assert "content-length" not in response.headers
        assert_cors(response, "http://example.test")
        body = Body(response)
        assert await body.frame() == PRELUDE
        assert await body.frame() == "o"
        await xhr_send(chat.client, url, connect_frame(chat.token(ALICE)))
        [connected] = stomp_frames(await body.frame())
        assert connected.startswith("CONNECTED\n")

        async with chat.client.stream("POST", url + "/xhr_streaming") as second:
            other = Body(second)
            assert await other.frame() == PRELUDE
            assert await other.frame() == 'c[2010,"Another connection still open"]'
            assert await other.frame() == ""  # and that response ends

        await xhr_send(chat.client, url, receipt_frame("still-here"))
        [receipt] = stomp_frames(await body.frame())
        assert "receipt-id:still-here" in receipt


async def test_streaming_response_limit_loses_nothing(chat: Chat) -> None:
    url = await open_connected(chat)
    ids = [f"r{i:02d}-" + "x" * 300 for i in range(20)]
    received: list[str] = []
    async with chat.client.stream("POST", url + "/xhr_streaming") as response:
        body = Body(response)
        assert await body.frame() == PRELUDE
        for receipt in ids:
            await xhr_send(chat.client, url, receipt_frame(receipt))
        sent = 0
        while frame := await body.frame():
            sent += len(frame) + 1
            received += stomp_frames(frame)
    # The response ended at the limit, long before everything was sent.
    assert RESPONSE_LIMIT <= sent < RESPONSE_LIMIT + 2048
    assert len(received) < len(ids)
    while len(received) < len(ids):  # the reconnecting client gets the rest
        received += stomp_frames((await chat.client.post(url + "/xhr")).text.rstrip("\n"))
    got = [
        line.split(":", 1)[1]
        for f in received
        for line in f.split("\n")
        if line.startswith("receipt-id:")
    ]
    assert got == ids


async def test_eventsource(chat: Chat) -> None:
    url = session_url()
    async with chat.client.stream("GET", url + "/eventsource") as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream; charset=UTF-8"
        assert response.headers["cache-control"] == NO_CACHE
        body = Body(response)
        assert await body.take(2) == "\r\n"
        assert await body.frame("\r\n\r\n") == "data: o"
        await xhr_send(chat.client, url, connect_frame(chat.token(ALICE)))
        event = await body.frame("\r\n\r\n")
        assert event.startswith("data: a[")
        [connected] = stomp_frames(event.removeprefix("data: "))
        assert connected.startswith("CONNECTED\n")


async def test_htmlfile(chat: Chat) -> None:
    missing = await chat.client.get("/ws/a/a/htmlfile")
    assert missing.status_code == 500
    assert '"callback" parameter required' in missing.text
    invalid = await chat.client.get("/ws/a/a/htmlfile", params={"c": "x(); alert(1)//"})
    assert invalid.status_code == 500
    assert 'invalid "callback" parameter' in invalid.text
    url = session_url()
    async with chat.client.stream("GET", url + "/htmlfile?c=%63allback") as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/html; charset=UTF-8"
        assert response.headers["cache-control"] == NO_CACHE
        body = Body(response)
        head = await body.frame("  </script>\n")
        assert head.startswith("<!doctype html>")
        assert "var c = parent.callback;" in head
        padding = await body.frame("\r\n")
        assert len(head) + len(padding) > 1024 - 20
        assert await body.frame("\r\n") == '<script>\np("o");\n</script>'
        await xhr_send(chat.client, url, connect_frame(chat.token(ALICE)))
        script = await body.frame("\r\n")
        assert script.startswith('<script>\np("a[\\"CONNECTED')
        frame = json.loads(script.removeprefix("<script>\np(").removesuffix(");\n</script>"))
        assert stomp_frames(frame)[0].startswith("CONNECTED\n")


async def test_jsonp(chat: Chat) -> None:
    missing = await chat.client.get("/ws/a/a/jsonp")
    assert missing.status_code == 500
    assert '"callback" parameter required' in missing.text
    url = session_url()
    opened = await chat.client.get(url + "/jsonp", params={"c": "x"})
    assert opened.status_code == 200
    assert opened.text == '/**/x("o");\r\n'
    assert opened.headers["content-type"] == "application/javascript; charset=UTF-8"
    assert opened.headers["cache-control"] == NO_CACHE

    form = {"Content-Type": "application/x-www-form-urlencoded"}
    sent = await chat.client.post(
        url + "/jsonp_send",
        headers=form,
        content="d="
        + (
            json.dumps([connect_frame(chat.token(ALICE))])
            .replace("%", "%25")
            .replace("&", "%26")
            .replace("+", "%2B")
        ),
    )
    assert (sent.status_code, sent.text) == (200, "ok")
    assert sent.headers["content-type"] == "text/plain; charset=UTF-8"
    assert sent.headers["cache-control"] == NO_CACHE
    polled = await chat.client.get(url + "/jsonp", params={"c": "x"})
    frame = json.loads(polled.text.removeprefix("/**/x(").removesuffix(");\r\n"))
    assert stomp_frames(frame)[0].startswith("CONNECTED\n")

    broken = await chat.client.post(url + "/jsonp_send", headers=form, content="d=%5B%22x")
    assert broken.status_code == 500
    assert "Broken JSON encoding." in broken.text
    for data in ("", "d=", "p=p"):
        empty = await chat.client.post(url + "/jsonp_send", headers=form, content=data)
        assert empty.status_code == 500, data
        assert "Payload expected." in empty.text
    utf8 = await chat.client.post(
        url + "/jsonp_send", headers=form, data={"d": json.dumps([receipt_frame("漢字")])}
    )
    assert utf8.text == "ok"
    polled = await chat.client.get(url + "/jsonp", params={"c": "x"})
    assert "receipt-id:漢字" in polled.text
    raw = await chat.client.post(
        url + "/jsonp_send",
        content=json.dumps([receipt_frame("raw")]),
        headers={"Content-Type": "text/plain"},
    )
    assert raw.text == "ok"
    polled = await chat.client.get(url + "/jsonp", params={"c": "x"})
    assert "receipt-id:raw" in polled.text


async def test_aborted_stream_interrupts_the_session(chat: Chat) -> None:
    url = await open_connected(chat)
    async with chat.client.stream("POST", url + "/xhr_streaming") as response:
        assert await Body(response).frame() == PRELUDE
    # The client went away mid-stream: anything in flight may be lost, so the session ends.
    # (The server may take a moment to see the disconnect; until then it is a second receiver.)
    for _ in range(100):
        answer = (await chat.client.post(url + "/xhr")).text
        if answer != 'c[2010,"Another connection still open"]\n':
            break
        await trio.sleep(0.05)
    assert answer == 'c[1002,"Connection interrupted"]\n'


async def test_frames_escape_what_browsers_mangle(chat: Chat) -> None:
    url = await open_connected(chat)
    receipt = "x\u2028y\u200dz\u00e9"
    await xhr_send(chat.client, url, receipt_frame(receipt))
    text = (await chat.client.post(url + "/xhr")).text
    assert "\\u2028" in text
    assert "\\u200d" in text
    assert "\u2028" not in text
    assert "\u200d" not in text
    assert "\u00e9" in text  # other non-ASCII text goes as UTF-8
    assert f"receipt-id:{receipt}" in stomp_frames(text.rstrip("\n"))[0]


async def http10(chat: Chat, request: str) -> tuple[str, str, trio.SocketStream]:
    """Send `request` over a raw HTTP/1.0 socket; the status line + headers, the body so far."""
    stream = await trio.open_tcp_stream("127.0.0.1", chat.port)
    await stream.send_all(request.encode())
    data = b""
    with trio.fail_after(10):
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(65536)
            assert chunk, data
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head.decode().lower(), rest.decode(), stream


async def read_to_eof(stream: trio.SocketStream, start: str) -> str:
    data = start.encode()
    with trio.fail_after(10):
        while chunk := await stream.receive_some(65536):
            data += chunk
    return data.decode()


async def test_http10_client(chat: Chat) -> None:
    head, body, stream = await http10(chat, "GET /ws/info HTTP/1.0\r\n\r\n")
    async with stream:
        assert head.startswith("http/1.1 200") or head.startswith("http/1.0 200")
        assert "transfer-encoding" not in head
        length = int(head.split("content-length:")[1].split("\r\n")[0])
        body = await read_to_eof(stream, body)  # and the server closes the connection
        assert len(body.encode()) == length
        assert json.loads(body)["websocket"] is True

    url = session_url()
    # Bound to a (bad) query token: this raw socket keeps no cookie for the client below.
    head, body, stream = await http10(
        chat,
        f"POST {url}/xhr_streaming?access_token=bad HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n",
    )
    async with stream:
        assert " 200" in head.split("\r\n")[0]
        assert "transfer-encoding" not in head
        assert "content-length" not in head
        with trio.fail_after(10):
            while "o\n" not in body:
                body += (await stream.receive_some(65536)).decode()
        assert body == PRELUDE + "\n" + "o\n"
        sent = await chat.client.post(
            url + "/xhr_send",
            params={"access_token": "bad"},
            content=json.dumps([connect_frame(None)]),
        )
        assert sent.status_code == 204  # refused: ERROR, then close
        rest = await read_to_eof(stream, "")
    frames = rest.rstrip("\n").split("\n")
    assert stomp_frames(frames[0])[0].startswith("ERROR\n")
    assert frames[1:] == ['c[3000,"Go away!"]']


async def test_websocket_transport(chat: Chat) -> None:
    url = chat.ws_url + session_url().removeprefix("/ws") + "/websocket"
    async with trio_websocket.open_websocket_url(url) as ws:
        assert await ws.get_message() == "o"
        await ws.send_message("")  # ignored
        await ws.send_message(json.dumps([connect_frame(chat.token(ALICE))]))
        [connected] = stomp_frames(await ws.get_message())
        assert connected.startswith("CONNECTED\n")
        await ws.send_message(json.dumps(receipt_frame("single")))  # one string, not an array
        assert "receipt-id:single" in stomp_frames(await ws.get_message())[0]
        await ws.send_message(json.dumps(["DISCONNECT\nreceipt:bye\n\n\x00"]))
        assert "receipt-id:bye" in stomp_frames(await ws.get_message())[0]
        assert await ws.get_message() == 'c[3000,"Go away!"]'
        with pytest.raises(trio_websocket.ConnectionClosed):
            await ws.get_message()

    async with trio_websocket.open_websocket_url(url) as ws:  # the id may be reused
        assert await ws.get_message() == "o"
        await ws.send_message('["a')
        with pytest.raises(trio_websocket.ConnectionClosed):  # dropped, no close frame
            await ws.get_message()


async def test_streams_outlive_quarts_response_timeout(nursery: trio.Nursery) -> None:
    # A bare app (no chatd services) with Quart's response timeout far below the stream's life.
    config = Config(
        server=ServerConfig(bind="127.0.0.1:0", shutdown_grace=1, sockjs_heartbeat_seconds=0.2)
    )
    app = QuartTrio(__name__)
    app.config["RESPONSE_TIMEOUT"] = 0.5
    install_sockjs(app, BrokerRuntime(), config.server)
    stop = trio.Event()
    [base] = await nursery.start(partial(serve_http, app, config, shutdown_trigger=stop.wait))
    async with (
        httpx.AsyncClient(base_url=base) as client,
        client.stream("GET", session_url() + "/eventsource") as response,
    ):
        body = Body(response)
        assert await body.take(2) == "\r\n"
        assert await body.frame("\r\n\r\n") == "data: o"
        start = trio.current_time()
        for _ in range(8):  # 1.6 s of heart-beats, three times the response timeout
            assert await body.frame("\r\n\r\n") == "data: h"
        assert trio.current_time() - start > 1.0
    stop.set()
