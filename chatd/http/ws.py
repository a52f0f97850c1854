"""`/ws` and `/ws/websocket`: STOMP over WebSocket on the HTTP port, served by the one
`BrokerRuntime` every transport shares.

The route negotiates the STOMP subprotocol (v12 > v11 > v10; a client offering none is still
accepted, CONNECT's `accept-version` decides), wraps Quart's websocket as a byte stream and
hands it to the session pump. Authentication is the broker's (CONNECT), not the HTTP layer's:
the handshake's query string and headers reach `ChatHooks.authenticate` through
`TransportInfo`. When the client goes away, Quart-Trio cancels this handler; the pump's
cleanup runs either way.
"""

from __future__ import annotations

from quart import Blueprint, websocket

from chatd.http.observe import REQUEST_ID_HEADER, request_id_from
from chatd.observability.logs import request_id
from chatd.observability.metrics import Metrics
from stomp.trio import BrokerRuntime, MessageStream, TransportInfo, choose_subprotocol, serve_stream

#: The paths STOMP clients use: plain WebSocket, and the SockJS-style raw WebSocket path.
WS_PATHS = ("/ws", "/ws/websocket")


def ws_blueprint(runtime: BrokerRuntime, metrics: Metrics | None = None) -> Blueprint:
    """The WebSocket routes bound to `runtime`; `metrics` counts the connections open."""
    bp = Blueprint("ws", __name__)

    async def stomp_over_websocket() -> None:
        # This task (and the session's tasks it starts) log with the handshake's request id.
        request_id.set(request_id_from(websocket.headers.get(REQUEST_ID_HEADER, "")))
        subprotocol = choose_subprotocol(websocket.requested_subprotocols)
        await websocket.accept(subprotocol=subprotocol)
        remote = websocket.scope.get("client")
        info = TransportInfo(
            "websocket",
            remote=(str(remote[0]), int(remote[1])) if remote else None,
            path=websocket.path,
            query_string=websocket.query_string.decode("latin-1"),
            headers=tuple((k.lower(), v) for k, v in websocket.headers.items()),
            subprotocol=subprotocol,
        )
        stream = MessageStream(websocket.receive, websocket.send, websocket.close)
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
