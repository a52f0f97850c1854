"""A WebSocket echo server on the broker's own transport (`stomp.trio._wsstream`): what the
Autobahn fuzzingclient drives (`scripts/autobahn`), and what `test_wsstream` talks to.

Every message comes back as it came (text as text, binary as binary); the handshake, control
frames and closing handshake are exactly the STOMP path's. Run from the repository root:
`python -m tests.stomp.ws_echo --port 0` logs `ws echo ready on HOST:PORT` on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import sys

import trio

from stomp.trio._wsstream import HandshakeError, accept, read_handshake

#: Seconds a client has to complete its opening handshake.
HANDSHAKE_TIMEOUT = 10.0


async def echo(stream: trio.SocketStream) -> None:
    """Serve one connection: handshake, echo every message until the peer closes, close."""
    try:
        with trio.fail_after(HANDSHAKE_TIMEOUT):
            ws, _ = await read_handshake(stream)
            websocket = await accept(stream, ws, None)
    except (HandshakeError, trio.TooSlowError, trio.BrokenResourceError, OSError):
        with contextlib.suppress(Exception):
            await stream.aclose()
        return
    try:
        while (message := await websocket.receive_message()) is not None:
            data, is_text = message
            await websocket.send_message(data, text=is_text)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the peer closed while we echoed
    finally:
        await websocket.aclose()


async def serve(host: str, port: int) -> None:
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()
    print(f"ws echo ready on {bound[0]}:{bound[1]}", file=sys.stderr, flush=True)
    await trio.serve_listeners(echo, listeners)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.stomp.ws_echo", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001, help="0: any free port")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(serve, args.host, args.port)


if __name__ == "__main__":
    main()
