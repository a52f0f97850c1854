"""`/ws` and `/ws/websocket`: STOMP over WebSocket on the HTTP port, served by the one
`BrokerRuntime` every transport shares.

A connection that opens with the upgrade is handed by `chatd.http.server` to
`websocket_handler`: the broker's own lean WebSocket transport, no Hypercorn or Quart in the
path. The Quart route below serves the rare upgrade that arrives on a connection that began
with plain HTTP requests (and Quart's test client), with the same behaviour.

The route negotiates the STOMP subprotocol (v12 > v11 > v10; a client offering none is still
accepted, CONNECT's `accept-version` decides), wraps Quart's websocket as a byte stream and
hands it to the session pump. Authentication is the broker's (CONNECT), not the HTTP layer's:
the handshake's query string and headers reach `ChatHooks.authenticate` through
`TransportInfo`. When the client goes away, Quart-Trio cancels this handler; the pump's
cleanup runs either way.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio
from quart import Blueprint, websocket
from quart.wrappers.base import BaseRequestWebsocket

from chatd.http.observe import REQUEST_ID_HEADER, request_id_from
from chatd.observability.logs import request_id
from chatd.observability.metrics import Metrics
from stomp.trio import (
    BrokerRuntime,
    MessageStream,
    TransportInfo,
    choose_subprotocol,
    serve_stream,
    serve_websocket_connection,
)

#: The paths STOMP clients use: plain WebSocket, and the SockJS-style raw WebSocket path.
WS_PATHS = ("/ws", "/ws/websocket")


def transport_info(
    kind: str, handshake: BaseRequestWebsocket, subprotocol: str | None = None
) -> TransportInfo:
    """What the STOMP hooks learn of the request that carries a session (a WebSocket handshake,
    or a SockJS HTTP request): peer address, path, query (``access_token``) and headers."""
    remote = handshake.scope.get("client")
    return TransportInfo(
        kind,
        remote=(str(remote[0]), int(remote[1])) if remote else None,
        path=handshake.path,
        query_string=handshake.query_string.decode("latin-1"),
        headers=tuple((k.lower(), v) for k, v in handshake.headers.items()),
        subprotocol=subprotocol,
    )


def ws_blueprint(
    runtime: BrokerRuntime, metrics: Metrics | None = None, *, one_frame_per_message: bool = False
) -> Blueprint:
    """The WebSocket routes bound to `runtime`; `metrics` counts the connections open;
    `one_frame_per_message` sends each frame in a message of its own (`MessageStream`)."""
    bp = Blueprint("ws", __name__)

    async def stomp_over_websocket() -> None:
        # This task (and the session's tasks it starts) log with the handshake's request id.
        request_id.set(request_id_from(websocket.headers.get(REQUEST_ID_HEADER, "")))
        subprotocol = choose_subprotocol(websocket.requested_subprotocols)
        await websocket.accept(subprotocol=subprotocol)
        info = transport_info("websocket", websocket, subprotocol)
        stream = MessageStream(
            websocket.receive,
            websocket.send,
            websocket.close,
            one_frame_per_message=one_frame_per_message,
        )
        if metrics is None:
            await serve_stream(runtime, stream, info)
            return
        metrics.websocket_sessions.inc()
        try:
            await serve_stream(runtime, stream, info)
        finally:
            metrics.websocket_sessions.dec()

    for path in WS_PATHS:
        bp.add_websocket(path, view_func=stomp_over_websocket, endpoint=path)
    return bp


def websocket_handler(
    runtime: BrokerRuntime,
    metrics: Metrics | None = None,
    *,
    one_frame_per_message: bool = False,
) -> Callable[[trio.SocketStream, bytes], Awaitable[None]]:
    """The `chatd.http.server.WebSocketHandler` for connections that open with a ``/ws``
    upgrade: the handshake's request id for the session's logs, the metrics gauge, then the
    session on the broker's WebSocket transport (`one_frame_per_message` as in
    `ws_blueprint`)."""

    def opened(info: TransportInfo) -> None:
        request_id.set(request_id_from(info.header(REQUEST_ID_HEADER) or ""))

    async def handle(stream: trio.SocketStream, head: bytes) -> None:
        if metrics is not None:
            metrics.websocket_sessions.inc()
        try:
            await serve_websocket_connection(
                runtime,
                stream,
                paths=WS_PATHS,
                initial=head,
                on_open=opened,
                one_frame_per_message=one_frame_per_message,
            )
        finally:
            if metrics is not None:
                metrics.websocket_sessions.dec()

    return handle
