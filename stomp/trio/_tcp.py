"""Raw STOMP over TCP (the classic port 61613): one session pump per peer."""

from __future__ import annotations

from typing import Any

import trio

from ._accept import serve_tcp_sockets
from ._hooks import TransportInfo
from ._runtime import BrokerRuntime
from ._session import serve_stream


async def serve_tcp(
    runtime: BrokerRuntime,
    host: str | None,
    port: int,
    *,
    backlog: int | None = None,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept STOMP connections on `host:port` (port 0: any free port) until cancelled.

    Reports the bound `(host, port)` of the first listener through `task_status.started()`, so
    `addr = await nursery.start(serve_tcp, runtime, "127.0.0.1", 0)` tells a test where to
    connect. Raises OSError if the address cannot be bound.
    """

    async def handle(stream: trio.SocketStream) -> None:
        await serve_stream(runtime, stream, TransportInfo("tcp", remote=peer_address(stream)))

    await serve_tcp_sockets(
        handle, host, port, backlog=backlog, what="stomp tcp", task_status=task_status
    )


def peer_address(stream: trio.SocketStream) -> tuple[str, int] | None:
    """The peer's (host, port), or None once it has gone."""
    try:
        address: Any = stream.socket.getpeername()
    except OSError:  # the peer already left
        return None
    return (str(address[0]), int(address[1]))
