"""Work around hypercorn 0.18's trio worker never closing connections behind Quart-Trio.

Symptom: with Quart-Trio on hypercorn's trio worker, a connection is never closed — not for
``Connection: close``, not for HTTP/1.0, not when ``keep_alive_timeout`` expires — so idle
clients pile up until the process runs out of file descriptors.

Cause: hypercorn does its per-connection bookkeeping *inside the app's final ``send()``*. When
the last body chunk goes out, that call runs hypercorn's ``_send_closed`` -> ``_maybe_recycle``,
which first queues ``http.disconnect`` to the app and then either restarts the keep-alive idle
timer (``Updated(idle=True)``) or closes the socket (``Closed()``). Quart-Trio answers the
disconnect by cancelling the nursery that holds the request — including the very task still
inside ``send()`` — so the next checkpoint of that bookkeeping (the idle timer's lock, the
socket's ``send_eof``) raises `trio.Cancelled` and neither the timer nor the close happens.

Fix: shield the final ``send()`` of each HTTP response. The bookkeeping then runs to the end;
Quart's cancellation lands right after it, where it was meant to. Hypercorn already shields
its socket writes, so the shield adds no new way to hang on a slow client. The raw-socket
regression test in ``tests/chatd/api/test_http_keepalive.py`` fails without this module.

A second bug of the same worker, fixed by `lock_connection_close`: a connection's EOF
(``TCPServer._close`` -> ``send_eof``) is sent without the connection's send lock, so it can
overlap a response another task is writing, and trio raises `trio.BusyResourceError` in
whichever comes second. Pipelining shows it: in a request it is an "Error in ASGI Framework";
in hypercorn's reader (answering a malformed pipelined request) it escapes the connection and
stops the whole server. ``tests/chatd/realtime/test_http_pipelining.py`` reproduces both.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from importlib.metadata import version
from typing import Any

import trio
from hypercorn.trio.tcp_server import TCPServer

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[MutableMapping[str, Any], Receive, Send], Awaitable[None]]


def _is_final(message: Message) -> bool:
    return message.get("type") == "http.response.body" and not message.get("more_body", False)


class ShieldFinalSend:
    """ASGI middleware: run the last ``http.response.body`` send of a response shielded."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return

        async def guarded_send(message: Message) -> None:
            if _is_final(message):
                with trio.CancelScope(shield=True):
                    await send(message)
            else:
                await send(message)

        await self.app(scope, receive, guarded_send)


_HYPERCORN_CLOSE_BUG = "0.18."


async def _close_under_send_lock(self: TCPServer) -> None:
    # The EOF is sent holding the send lock, so no write can start during it; if a write is
    # in progress the EOF is skipped, and closing the socket ends that write (what hypercorn
    # meant by catching BusyResourceError here, which only covered the EOF's own side).
    try:
        self.send_lock.acquire_nowait()
    except trio.WouldBlock:
        pass
    else:
        try:
            await self.stream.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError, AttributeError):
            pass  # already gone, or a TLS stream (no half-close)
        finally:
            self.send_lock.release()
    await self.stream.aclose()


def lock_connection_close() -> None:
    """Make hypercorn's trio connections send their EOF under their send lock (see the module
    docstring). Only hypercorn 0.18 is patched: another version's internals may differ, and
    the pipelining regression test says whether it needs this. Idempotent."""
    if version("hypercorn").startswith(_HYPERCORN_CLOSE_BUG):
        TCPServer._close = _close_under_send_lock  # type: ignore[method-assign]
