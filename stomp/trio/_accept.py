"""Accepting connections: every one waiting in one go, not one per turn of trio's loop.

Why not `trio.serve_listeners`: it accepts one connection per turn of the loop (trio's socket
`accept` yields after each success). With thousands of sessions busy on the same loop, a turn
takes tens of milliseconds: a few dozen connections a second. After a chatd restart in the
soak, reconnecting clients (and even a ``GET /health/live``) waited 10 to 30 s in the kernel's
accept queue.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Final

import trio

log = logging.getLogger("stomp.trio")

#: The most connections `accept_connections` takes in one go before other tasks run.
ACCEPT_BATCH: Final = 256
#: accept(2) errors that mean the process or host is out of something: wait, then go on
#: (as `trio.serve_listeners` does).
_CAPACITY_ERRNOS: Final = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}

Handler = Callable[[trio.SocketStream], Awaitable[None]]


async def accept_connections(sock: socket.socket, handler: Handler, nursery: trio.Nursery) -> None:
    """Accept connections on the listening `sock` until cancelled (then close it), each
    handled by `handler` in `nursery` and closed after it. Every connection waiting is taken
    in one go (up to `ACCEPT_BATCH`), then the loop turns."""
    sock.setblocking(False)
    with sock:
        while True:
            await trio.lowlevel.wait_readable(sock)
            for _ in range(ACCEPT_BATCH):
                try:
                    conn, _ = sock.accept()
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno not in _CAPACITY_ERRNOS:
                        raise
                    log.error("accept failed (%s); retrying in 0.1 s", errno.errorcode[exc.errno])
                    await trio.sleep(0.1)
                    break
                stream = trio.SocketStream(trio.socket.from_stdlib_socket(conn))
                nursery.start_soon(_handled, handler, stream)


async def _handled(handler: Handler, stream: trio.SocketStream) -> None:
    try:
        await handler(stream)
    finally:
        await trio.aclose_forcefully(stream)


async def serve_tcp_sockets(
    handler: Handler,
    host: str | None,
    port: int,
    *,
    backlog: int | None = None,
    what: str = "stomp",
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on `host:port` (every address `trio.open_tcp_listeners` binds for it; port 0:
    any free port) and serve each connection with `handler` until cancelled. Logs `what`
    listens where and reports the first listener's bound `(host, port)`. Raises OSError if
    the address cannot be bound."""
    listeners = await trio.open_tcp_listeners(port, host=host, backlog=backlog)
    sockets = [_stdlib(listener.socket) for listener in listeners]
    bound = sockets[0].getsockname()
    async with trio.open_nursery() as nursery:
        for sock in sockets:
            nursery.start_soon(accept_connections, sock, handler, nursery)
        log.debug("%s listening on %s:%s", what, bound[0], bound[1])
        task_status.started((str(bound[0]), int(bound[1])))


def _stdlib(sock: trio.socket.SocketType) -> socket.socket:
    """The listening socket as a standard one (accepted without trio's per-call yield)."""
    return socket.socket(sock.family, sock.type, sock.proto, fileno=sock.detach())
