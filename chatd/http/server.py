"""Running the app on Hypercorn's trio worker with chatd's settings, on a socket chatd owns.

The supervisor calls `serve_http` as a part; this module is the only place that knows
Hypercorn's configuration object and its worker internals, so its knobs (keep-alive, graceful
drain, logging) are mapped from `chatd.config` in one spot.

Why chatd accepts the connections itself: STOMP over WebSocket is the hot path, and carried
through Hypercorn's WebSocket stream and Quart's websocket wrappers it cost ~40 % of the
trio thread at 400 messages/s (issue 11). So each new connection's first request head is
read here: a WebSocket upgrade to ``/ws`` or ``/ws/websocket`` goes to the broker's own lean
WebSocket transport (`stomp.trio.serve_websocket_connection`); anything else — every REST,
health, SockJS and demo request, and any upgrade on a connection that started as plain HTTP —
goes to Hypercorn's connection handler unchanged, with the bytes already read replayed first.
The loop below is Hypercorn 0.18's `worker_serve` (lifespan, graceful drain) with that router
in front; Hypercorn is pinned, so its internals are a known quantity.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, Final

import hypercorn.config
import trio
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState, LifespanState
from hypercorn.utils import ShutdownError, raise_shutdown, repr_socket_addr, wrap_app
from quart_trio import QuartTrio

from chatd.config import Config
from chatd.http.keepalive import lock_connection_close
from stomp.trio import accept_connections

log = logging.getLogger(__name__)

#: Handles a connection whose first request is a STOMP WebSocket upgrade; gets the socket and
#: the bytes already read from it (the request head, and anything after it).
WebSocketHandler = Callable[[trio.SocketStream, bytes], Awaitable[None]]

#: A request line that may be a STOMP WebSocket upgrade (the headers then decide).
_WS_REQUEST: Final = re.compile(rb"GET /ws(?:/websocket)?(?:\?[^ \r\n]*)? HTTP/1\.1\r\n")
_UPGRADE: Final = re.compile(rb"\r\nupgrade:[ \t]*websocket[ \t]*\r\n", re.IGNORECASE)
#: The most of a request head read before deciding where a connection goes.
MAX_HEAD: Final = 16 * 1024
#: Seconds a peer has to finish a request head that looks like a WebSocket upgrade.
HEAD_TIMEOUT: Final = 10.0


def hypercorn_config(config: Config) -> hypercorn.config.Config:
    """Hypercorn settings for `config`: bind, listen backlog, keep-alive timeout, drain time,
    our loggers, SO_REUSEPORT (``[server] reuse_port``: the workers of ``chatd serve
    --workers``).

    The backlog: Hypercorn's default of 100 dropped the connection attempts of clients coming
    back together after a restart (1 500 at once in the soak); each dropped one is retried by
    the kernel 1, 3, 7, 15 s later, so reconnects took up to a minute with chatd idle."""
    host, port = config.server.bind_address
    hconfig = hypercorn.config.Config()
    hconfig.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    hconfig.keep_alive_timeout = config.server.keepalive_timeout
    hconfig.backlog = config.server.listen_backlog
    hconfig.graceful_timeout = config.server.shutdown_grace
    hconfig.accesslog = None
    # Hypercorn's INFO lines ("Running on ...") would duplicate chatd's one ready line.
    error_logger = logging.getLogger("hypercorn.error")
    error_logger.setLevel(max(logging.WARNING, logging.getLogger("chatd").getEffectiveLevel()))
    hconfig.errorlog = error_logger
    hconfig.include_server_header = False
    if config.server.reuse_port:
        hconfig.workers = 2  # what makes Hypercorn's create_sockets set SO_REUSEPORT
    return hconfig


def release_connection(server: TCPServer) -> None:
    """Drop the closed connection's protocol, so its objects are freed at once.

    Hypercorn's objects of one connection form a cycle: the server holds its protocol, and the
    protocol holds the server's `protocol_send`. Left so, a closed connection's ~40 objects
    (its socket, h11 state and buffers, task group) waited for the cyclic collector, and
    with chatd's thresholds (`chatd.cli.tune_gc`) most of them had reached the oldest
    generation first, which it walks rarely: in the soak each instance's RSS grew with every
    HTTP connection it had served, and each young collection freed thousands of them.
    """
    vars(server).pop("protocol", None)


class _Replayed:
    """An accepted socket stream that first gives back bytes the router already read.

    Hypercorn's `TCPServer` needs only these methods and `socket` (no `do_handshake`: that
    is how it tells a plain stream from TLS).
    """

    def __init__(self, stream: trio.SocketStream, initial: bytes) -> None:
        self._stream = stream
        self._initial = initial
        self.socket = stream.socket

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._initial:
            data, self._initial = self._initial, b""
            return data
        return await self._stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    async def aclose(self) -> None:
        await self._stream.aclose()


async def _first_request_head(stream: trio.SocketStream, idle_timeout: float) -> bytes | None:
    """What the peer sent first: enough to tell a STOMP upgrade from anything else (the whole
    head when the request line could be one). None when it sent nothing in `idle_timeout`
    seconds, left, or reset the connection: this runs in the listener's nursery, where an
    exception would stop the whole server (the soak's idle and reset connections did)."""
    data = b""
    try:
        with trio.move_on_after(idle_timeout):
            data = bytes(await stream.receive_some(MAX_HEAD))
        if not data:
            return None
        if not (data.startswith(b"GET /ws") or b"GET /ws".startswith(data)):
            return data
        with trio.move_on_after(HEAD_TIMEOUT):
            while b"\r\n\r\n" not in data and len(data) < MAX_HEAD:
                more = await stream.receive_some(MAX_HEAD)
                if not more:
                    break
                data += more
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return None
    return data


def is_stomp_upgrade(head: bytes) -> bool:
    """True for a request head that asks to upgrade ``/ws`` or ``/ws/websocket`` (any query)
    to a WebSocket."""
    end = head.find(b"\r\n\r\n")
    return (
        end >= 0
        and _WS_REQUEST.match(head) is not None
        and _UPGRADE.search(head, 0, end + 2) is not None
    )


async def serve_http(
    app: QuartTrio,
    config: Config,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]],
    websocket: WebSocketHandler | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` until `shutdown_trigger` returns, then drain for ``shutdown_grace``.

    With `websocket`, connections that open with a STOMP WebSocket upgrade are handed to it
    instead (see the module docstring). Reports the bound addresses
    (``["http://127.0.0.1:8080"]``) through `task_status`. After the trigger, no new
    connection is accepted, idle keep-alive connections close at once and in-flight requests
    (and WebSocket sessions) get until the grace deadline. Raises OSError if the address
    cannot be bound.
    """
    lock_connection_close()
    hconfig = hypercorn_config(config)
    wrapped = wrap_app(app, hconfig.wsgi_max_body_size, "asgi")
    state: LifespanState = {}
    lifespan = Lifespan(wrapped, hconfig, state)
    context = WorkerContext(None)

    async def handle(stream: trio.SocketStream) -> None:
        initial = b""
        if websocket is not None:
            head = await _first_request_head(stream, hconfig.keep_alive_timeout)
            if head is None:
                await stream.aclose()
                return
            if is_stomp_upgrade(head):
                await websocket(stream, head)
                return
            initial = head
        replayed: Any = _Replayed(stream, initial)  # Hypercorn types its stream too narrowly
        server = TCPServer(wrapped, hconfig, context, ConnectionState(state.copy()), replayed)
        try:
            await server
        finally:
            release_connection(server)

    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        async with trio.open_nursery() as server_nursery:
            sockets = hconfig.create_sockets().insecure_sockets
            binds = []
            for sock in sockets:
                sock.listen(hconfig.backlog)
                binds.append(f"http://{repr_socket_addr(sock.family, sock.getsockname())}")
            task_status.started(binds)
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(raise_shutdown, shutdown_trigger)
                    nursery.start_soon(raise_shutdown, context.terminate.wait)
                    for sock in sockets:
                        nursery.start_soon(accept_connections, sock, handle, server_nursery)
                    await trio.sleep_forever()
            except BaseExceptionGroup as error:
                _, other_errors = error.split((ShutdownError, KeyboardInterrupt))
                if other_errors is not None:
                    raise other_errors from None
            finally:
                await context.terminated.set()
                server_nursery.cancel_scope.deadline = (
                    trio.current_time() + hconfig.graceful_timeout
                )
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()
