"""Accepting connections (`stomp.trio.accept_connections`, used by `serve_tcp`,
`serve_websocket` and chatd's HTTP listener): every connection waiting is taken in one turn
of trio's loop, counted in turns, not seconds.

`trio.serve_listeners` accepts one connection per turn: after a chatd restart, with thousands
of sessions busy on that loop, a few dozen a second, and in the soak even `GET /health/live`
waited 10 to 30 s to be accepted."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable

import trio

from stomp.trio import accept_connections
from stomp.trio._accept import serve_tcp_sockets

WAITING = 300  # connections in the kernel's accept queue at once


async def taken_within(
    turns: int, address: tuple[str, int], start: Callable[[Callable[..., Awaitable[None]]], None]
) -> None:
    """Open WAITING connections to `address`, `start` the acceptor with a counting handler,
    and fail unless every connection reached the handler within `turns` turns of the loop."""
    clients = [socket.create_connection(address) for _ in range(WAITING)]
    accepted = 0
    everyone = trio.Event()

    async def handle(stream: trio.SocketStream) -> None:
        nonlocal accepted
        accepted += 1
        if accepted == WAITING:
            everyone.set()
        await trio.sleep_forever()

    try:
        start(handle)
        turn = 0
        while not everyone.is_set():
            await trio.lowlevel.checkpoint()  # one turn of the loop
            turn += 1
            assert turn < turns, f"{accepted} of {WAITING} accepted after {turn} turns"
    finally:
        for client in clients:
            client.close()


async def test_connections_waiting_on_a_socket_are_taken_in_one_turn_of_the_loop(
    nursery: trio.Nursery,
) -> None:
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen(1024)
    await taken_within(
        30,
        listening.getsockname(),
        lambda handle: nursery.start_soon(accept_connections, listening, handle, nursery),
    )


async def test_the_tcp_and_websocket_listeners_take_every_waiting_connection_too(
    nursery: trio.Nursery,
) -> None:
    handlers: list[Callable[..., Awaitable[None]]] = []

    async def handle(stream: trio.SocketStream) -> None:
        await handlers[0](stream)

    host, port = await nursery.start(serve_tcp_sockets, handle, "127.0.0.1", 0)
    await taken_within(30, (host, port), handlers.append)
