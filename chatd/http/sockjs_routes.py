"""SockJS under ``/ws``: ``/ws/info``, ``/ws/iframe*.html`` and, per session,
``/ws/{server}/{session}/{transport}`` for websocket, xhr, xhr_send, xhr_streaming,
eventsource, htmlfile, jsonp and jsonp_send.

The protocol's rules (framing, sessions, one receiver) live in `chatd.realtime.sockjs`; this
module maps them onto HTTP: CORS and cache headers, the 404/405/500 answers the protocol
expects, and streaming responses exempt from Quart's response timeout (a stream lasts until
its response limit or the session ends, far beyond 60 s).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from email.utils import formatdate
from urllib.parse import parse_qs

import trio
from quart import Blueprint, Response, after_this_request, current_app, request, websocket
from quart_trio import QuartTrio
from werkzeug.wrappers.response import Response as WerkzeugResponse

from chatd.config import ServerConfig
from chatd.http.errors import error_response, json_response
from chatd.http.ws import transport_info
from chatd.realtime.sockjs import SockJSSessions, SockJSSettings
from chatd.realtime.sockjs.framing import (
    EVENTSOURCE_PRELUDE,
    XHR_STREAMING_PRELUDE,
    PayloadError,
    callback_error,
    decode_messages,
    htmlfile_prelude,
    iframe_html,
    valid_id,
    wrap_eventsource,
    wrap_htmlfile,
    wrap_jsonp,
    wrap_xhr,
)
from chatd.realtime.sockjs.session import SockJSSession
from stomp.trio import BrokerRuntime

#: What Quart hands an after-request function: its own response or a plain werkzeug one.
AnyResponse = Response | WerkzeugResponse
PREFIX = "/ws"
#: Where the iframe page loads sockjs-client from: the copy the demo page vendors. Only the
#: iframe-based transports (old browsers without CORS) load it.
DEFAULT_SOCKJS_URL = "/demo/static/vendor/sockjs.min.js"
#: The SockJS protocol's value (sockjs-node's) for everything that must not be cached.
NO_CACHE = "no-store, no-cache, no-transform, must-revalidate, max-age=0"
ONE_YEAR = 31_536_000
_IFRAME = re.compile(r"^iframe[0-9a-z._-]*\.html$")

#: The cookie that binds an HTTP-transport session to the client that opened it.
SESSION_COOKIE = "chatd_sockjs"

JS = "application/javascript; charset=UTF-8"
TEXT = "text/plain; charset=UTF-8"
HTML = "text/html; charset=UTF-8"

#: The HTTP transports and the method each takes.
TRANSPORTS: dict[str, str] = {
    "xhr": "POST",
    "xhr_send": "POST",
    "xhr_streaming": "POST",
    "eventsource": "GET",
    "htmlfile": "GET",
    "jsonp": "GET",
    "jsonp_send": "POST",
}


def _cors() -> dict[str, str]:
    # The Origin is echoed, `null` too (file:// pages, sandboxed iframes), with credentials
    # (the session cookies), as sockjs-node does. Browsers refuse credentials with `*`, so a
    # request without an Origin (not a browser's CORS request) gets `*` and no credentials.
    origin = request.headers.get("Origin")
    headers = {"Access-Control-Allow-Origin": origin or "*", "Vary": "Origin"}
    if origin:
        headers["Access-Control-Allow-Credentials"] = "true"
    wanted = request.headers.get("Access-Control-Request-Headers")
    if wanted:
        headers["Access-Control-Allow-Headers"] = wanted
    return headers


def _options(methods: str) -> Response:
    headers = _cors() | {
        "Cache-Control": f"public, max-age={ONE_YEAR}",
        "Expires": formatdate(time.time() + ONE_YEAR, usegmt=True),
        "Access-Control-Max-Age": str(ONE_YEAR),
        "Access-Control-Allow-Methods": methods,
    }
    return _bare(204, headers)


def _bare(status: int, headers: dict[str, str]) -> Response:
    """A response with no body and no content type (204, 304, 405)."""
    response = Response(b"", status=status, headers=headers)
    del response.headers["Content-Type"]
    return response


def _text(
    body: str, status: int = 200, content_type: str = TEXT, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        body,
        status=status,
        content_type=content_type,
        headers={"Cache-Control": NO_CACHE} | _cors() | (headers or {}),
    )


def _query_token() -> str | None:
    return request.args.get("access_token")


def _set_session_cookie(response: AnyResponse, secret: str) -> None:
    """Hand the opener of a session its secret: a cookie scoped to the session's own URLs
    (``/ws/{server}/{session}``, under which every transport lives), so the browser returns
    it on each later request of that session and on nothing else.

    Cross-site pages need ``SameSite=None``, which browsers accept only with ``Secure``, so
    only over https: a request over TLS, or from an https page (``Origin``), which can reach
    us only over https (browsers block mixed content) even where a proxy ends TLS.
    """
    https = request.scheme == "https" or request.headers.get("Origin", "").startswith("https://")
    response.set_cookie(
        SESSION_COOKIE,
        secret,
        path=request.path.rsplit("/", 1)[0],
        httponly=True,
        secure=https,
        samesite="None" if https else "Lax",
    )


def sockjs_blueprint(
    sessions: SockJSSessions, *, sockjs_url: str = DEFAULT_SOCKJS_URL
) -> Blueprint:
    """The SockJS routes under ``/ws``, carrying STOMP sessions of `sessions`."""
    bp = Blueprint("sockjs", __name__)
    settings = sessions.settings
    iframe = iframe_html(sockjs_url)
    iframe_etag = '"' + hashlib.sha256(iframe.encode()).hexdigest()[:32] + '"'

    @bp.route(PREFIX, methods=["GET"])
    @bp.route(PREFIX + "/", methods=["GET"])
    async def greeting() -> Response:
        return Response("Welcome to SockJS!\n", content_type=TEXT)

    @bp.route(PREFIX + "/info", methods=["GET", "OPTIONS"])
    async def info() -> Response:
        if request.method == "OPTIONS":
            return _options("OPTIONS, GET")
        body = {
            "websocket": settings.websocket,
            "origins": ["*:*"],
            "cookie_needed": settings.cookie_needed,
            "entropy": secrets.randbits(32),
        }
        response = json_response(body, headers={"Cache-Control": NO_CACHE} | _cors())
        response.headers["Content-Type"] = "application/json; charset=UTF-8"
        return response

    @bp.route(PREFIX + "/<name>", methods=["GET", "POST"])
    async def page(name: str) -> Response:
        if request.method != "GET":
            return error_response(404, f"no route for {request.method} {request.path}")
        if name == "websocket":  # an HTTP request where the WebSocket route expects a handshake
            return _text('Can "Upgrade" only to "WebSocket".', 400)
        if not _IFRAME.match(name):
            return error_response(404, f"no route for GET {request.path}")
        if request.headers.get("If-None-Match") == iframe_etag:
            return _bare(304, {"ETag": iframe_etag})
        return Response(
            iframe,
            content_type=HTML,
            headers={
                "Cache-Control": f"public, max-age={ONE_YEAR}",
                "Expires": formatdate(time.time() + ONE_YEAR, usegmt=True),
                "ETag": iframe_etag,
            },
        )

    @bp.route(
        PREFIX + "/<server>/<session_id>/<transport>",
        methods=["GET", "POST", "OPTIONS", "PUT", "DELETE", "PATCH"],
    )
    async def session_transport(server: str, session_id: str, transport: str) -> Response:
        if transport == "websocket":
            if request.method != "GET":
                return _bare(405, {"Allow": "GET"})
            if request.headers.get("Upgrade", "").lower() != "websocket":
                return _text('Can "Upgrade" only to "WebSocket".', 400)
            return _text('"Connection" must be "Upgrade".', 400)
        method = TRANSPORTS.get(transport)
        if method is None or not (valid_id(server) and valid_id(session_id)):
            return error_response(404, f"no route for {request.method} {request.path}")
        if request.method == "OPTIONS":
            return _options(f"OPTIONS, {method}")
        if request.method != method:
            return _bare(405, {"Allow": f"OPTIONS, {method}"})
        if transport in ("xhr_send", "jsonp_send"):
            return await _send(session_id, jsonp=transport == "jsonp_send")
        return await _receive(session_id, transport)

    @bp.after_request
    async def _sticky_cookie(response: Response) -> Response:
        # With `cookie_needed`, session URLs set JSESSIONID (echoing the client's), which load
        # balancers use to keep a SockJS session's requests on the one instance that holds it.
        if (
            settings.cookie_needed
            and request.endpoint == "sockjs.session_transport"
            and request.method != "OPTIONS"
        ):
            value = request.cookies.get("JSESSIONID") or "dummy"
            response.set_cookie("JSESSIONID", value, path="/")
        return response

    async def _send(session_id: str, *, jsonp: bool) -> Response:
        session = _known(session_id)
        if session is None:
            return error_response(404, f"no SockJS session {session_id}")
        data = await request.get_data(as_text=False)
        payload: str | bytes = data
        if jsonp and request.mimetype == "application/x-www-form-urlencoded":
            text = data if isinstance(data, str) else data.decode("utf-8", "replace")
            payload = parse_qs(text).get("d", [""])[0]
        try:
            messages = decode_messages(payload)
        except PayloadError as exc:
            return _text(str(exc), 500)
        await session.feed(messages)
        if jsonp:
            return _text("ok")
        return Response(
            b"", status=204, content_type=TEXT, headers={"Cache-Control": NO_CACHE} | _cors()
        )

    def _known(session_id: str) -> SockJSSession | None:
        """The session, if this request comes from its opener (`SockJSSession.admits`): it
        carries the session's cookie, or the ``access_token`` the session was opened with
        (sockjs-client repeats the SockJS URL's query on every request; clients without a
        cookie jar rely on it)."""
        session = sessions.lookup(session_id)
        if session is None or not session.admits(
            request.cookies.getlist(SESSION_COOKIE), _query_token()
        ):
            return None
        return session

    def _session_for(session_id: str, kind: str) -> SockJSSession | Response:
        """The session to receive from (a new one for an unknown id), or the refusal."""
        if sessions.lookup(session_id) is None:
            if sessions.full:
                return error_response(
                    503, "too many SockJS sessions; try again later", headers={"Retry-After": "5"}
                )
            nursery: trio.Nursery = current_app.nursery  # type: ignore[attr-defined]
            info = transport_info(f"sockjs-{kind}", request)
            session = sessions.create(session_id, info, nursery, bound_token=_query_token())
            assert session.secret is not None
            secret = session.secret

            @after_this_request
            async def _bind(response: AnyResponse) -> AnyResponse:
                _set_session_cookie(response, secret)
                return response

            return session
        return _known(session_id) or error_response(404, f"no SockJS session {session_id}")

    async def _receive(session_id: str, transport: str) -> Response:
        wrap: Callable[[str], str]
        prelude = ""
        streaming = transport != "xhr" and transport != "jsonp"
        if transport in ("htmlfile", "jsonp"):
            callback = request.args.get("c")
            problem = callback_error(callback)
            if problem is not None or callback is None:
                return _text(problem or "", 500)
            if transport == "htmlfile":
                wrap, prelude, content_type = wrap_htmlfile, htmlfile_prelude(callback), HTML
            else:
                wrap, content_type = wrap_jsonp(callback), JS
        elif transport == "eventsource":
            wrap, prelude = wrap_eventsource, EVENTSOURCE_PRELUDE
            content_type = "text/event-stream; charset=UTF-8"
        else:
            wrap, content_type = wrap_xhr, JS
            prelude = XHR_STREAMING_PRELUDE if streaming else ""
        session = _session_for(session_id, transport)
        if isinstance(session, Response):
            return session
        headers = {"Cache-Control": NO_CACHE} | _cors()
        frames = sessions.frames(session, streaming=streaming)
        if not streaming:
            body = ""
            async with aclosing(frames) as polled:
                async for frame in polled:
                    body += wrap(frame)
            return Response(body, content_type=content_type, headers=headers)

        async def stream() -> AsyncIterator[bytes]:
            yield prelude.encode()
            async with aclosing(frames) as streamed:
                async for frame in streamed:
                    yield wrap(frame).encode()

        response = Response(stream(), content_type=content_type, headers=headers)
        response.timeout = None  # Quart: None = no time limit
        return response

    async def sockjs_websocket(server: str, session_id: str) -> None:
        if not settings.websocket or not (valid_id(server) and valid_id(session_id)):
            await websocket.close(1002)  # before accept: the client gets HTTP 403
            return
        await websocket.accept()
        info = transport_info("sockjs-websocket", websocket)
        session = sessions.new_session(session_id)
        broken = False

        async def read() -> None:
            nonlocal broken
            while True:
                message = await websocket.receive()
                if not message:  # an empty message is ignored
                    continue
                try:
                    messages = decode_messages(message)
                except PayloadError:
                    # Broken JSON: drop the connection without a close frame (the protocol).
                    broken = True
                    session.close(1002, "Broken JSON encoding.")
                    nursery.cancel_scope.cancel()
                    return
                await session.feed(messages)

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sessions.run, session, info)
                nursery.start_soon(read)
                async with aclosing(
                    sessions.frames(session, streaming=True, limit=float("inf"))
                ) as frames:
                    async for frame in frames:
                        await websocket.send(frame)
                nursery.cancel_scope.cancel()
            await websocket.close(1002 if broken else 1000)
        finally:
            session.close()

    bp.add_websocket(
        PREFIX + "/<server>/<session_id>/websocket",
        view_func=sockjs_websocket,
        endpoint="sockjs_websocket",
    )
    return bp


def install_sockjs(app: QuartTrio, runtime: BrokerRuntime, server: ServerConfig) -> SockJSSessions:
    """Serve SockJS on `app` with ``[server] sockjs_*`` settings; returns the session table
    (also ``app.extensions["sockjs"]``: its `sessions_open` is for metrics). Sessions run in
    the app's nursery and are cancelled when the app stops serving."""
    sessions = SockJSSessions(
        runtime,
        SockJSSettings(
            heartbeat=server.sockjs_heartbeat_seconds,
            disconnect_delay=server.sockjs_disconnect_delay,
            response_limit=server.sockjs_response_limit,
            websocket=server.sockjs_websocket,
            max_sessions=server.sockjs_max_sessions,
            cookie_needed=server.sockjs_cookie_needed,
            # What waits for a receiver counts like what waits for a socket write.
            max_pending_bytes=runtime.max_pending_bytes,
        ),
    )
    app.register_blueprint(sockjs_blueprint(sessions))

    @app.after_serving
    async def _close_sockjs() -> None:
        sessions.close_all()

    app.extensions["sockjs"] = sessions
    return sessions
