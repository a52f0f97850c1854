"""`python -m stomp`: run the broker alone, over raw TCP and/or WebSocket.

Open to any client unless credentials are given (`--login` and `--passcode`, `--users FILE`):
a CONNECT must then carry one of those login/passcode pairs, or it is refused with an ERROR
("access refused") and closed, as RabbitMQ refuses an unknown user.

Logs one ready line, which scripts and tests parse, once every listener is bound:

    stomp broker ready tcp=127.0.0.1:54321 ws=ws://127.0.0.1:54322/ws

(parts for transports that are not enabled are left out). SIGINT or SIGTERM shuts down
gracefully: every session gets an ERROR ("server shutting down") and its transport is closed
(WebSocket code 1001) within the shutdown timeout; the process then exits 0.
"""

from __future__ import annotations

import argparse
import functools
import logging
import signal
import sys
from collections.abc import Sequence

import trio

from . import DEFAULT_HEARTBEAT, DEFAULT_MAX_BODY_SIZE, DEFAULT_MAX_FRAME_SIZE, Users
from .broker import (
    DEFAULT_MAX_QUEUE_BACKLOG,
    DEFAULT_MAX_SUBSCRIPTIONS,
    DEFAULT_MAX_UNACKED,
    Broker,
    Limits,
)
from .trio import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MAX_PENDING_BYTES,
    DEFAULT_MAX_PENDING_FRAMES,
    DEFAULT_SHUTDOWN_TIMEOUT,
    BrokerRuntime,
    CheckPasswords,
    serve_tcp,
    serve_websocket,
)

log = logging.getLogger("stomp")

DEFAULT_TCP = "127.0.0.1:61613"


def _address(value: str) -> tuple[str, int]:
    host, colon, port = value.rpartition(":")
    if not colon or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def _heartbeat(value: str) -> tuple[int, int]:
    parts = value.split(",")
    if len(parts) != 2 or not all(part.strip().isdigit() for part in parts):
        raise argparse.ArgumentTypeError(f"expected SEND,RECV in ms, got {value!r}")
    return int(parts[0]), int(parts[1])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m stomp", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--tcp",
        type=_address,
        metavar="HOST:PORT",
        help=f"raw STOMP listener (default {DEFAULT_TCP} if no --ws)",
    )
    parser.add_argument(
        "--ws",
        type=_address,
        metavar="HOST:PORT",
        help="STOMP over WebSocket listener, at path /ws",
    )
    parser.add_argument("--ws-path", default="/ws", help="WebSocket path (default /ws)")
    parser.add_argument(
        "--binary", action="store_true", help="send WebSocket binary messages instead of text"
    )
    parser.add_argument(
        "--one-frame-per-message",
        action="store_true",
        help="send each frame (and heart-beat) in a WebSocket message of its own, "
        "for clients that parse one frame per message (default: what is queued "
        "goes in one message)",
    )
    parser.add_argument(
        "--heartbeat",
        type=_heartbeat,
        default=DEFAULT_HEARTBEAT,
        metavar="SEND,RECV",
        help="fastest heart-beats the server sends and expects, in ms; a client "
        "asking for slower ones gets what it asks for (0: off; default "
        "{},{})".format(*DEFAULT_HEARTBEAT),
    )
    access = parser.add_argument_group(
        "credentials",
        "without any, every client may connect; with some, CONNECT must carry "
        "one of the login/passcode pairs given",
    )
    access.add_argument("--login", metavar="USER", help="a user name (needs --passcode)")
    access.add_argument(
        "--passcode",
        metavar="PASS",
        help="that user's password (other local users may see it in the "
        "process list: prefer --users)",
    )
    access.add_argument(
        "--users",
        type=argparse.FileType("r", encoding="utf-8"),
        metavar="FILE",
        help="a file of users, one user:password a line ('#' comments)",
    )
    limits = parser.add_argument_group("limits")
    limits.add_argument(
        "--max-pending-frames",
        type=int,
        default=DEFAULT_MAX_PENDING_FRAMES,
        help="frames queued for one session before it is a slow consumer",
    )
    limits.add_argument(
        "--max-pending-bytes",
        type=int,
        default=DEFAULT_MAX_PENDING_BYTES,
        help="bytes queued for one session before it is a slow consumer",
    )
    limits.add_argument(
        "--max-frame-size",
        type=int,
        default=DEFAULT_MAX_FRAME_SIZE,
        help="largest frame (and WebSocket message) accepted",
    )
    limits.add_argument(
        "--max-body-size",
        type=int,
        default=DEFAULT_MAX_BODY_SIZE,
        help="largest frame body accepted",
    )
    limits.add_argument(
        "--max-subscriptions",
        type=int,
        default=DEFAULT_MAX_SUBSCRIPTIONS,
        help="subscriptions per session",
    )
    limits.add_argument(
        "--max-unacked",
        type=int,
        default=DEFAULT_MAX_UNACKED,
        help="unacknowledged client-ack deliveries per session",
    )
    limits.add_argument(
        "--max-queue-backlog",
        type=int,
        default=DEFAULT_MAX_QUEUE_BACKLOG,
        help="undelivered messages one /queue keeps",
    )
    limits.add_argument(
        "--connect-timeout",
        type=float,
        default=DEFAULT_CONNECT_TIMEOUT,
        metavar="SECONDS",
        help="time a peer has to send CONNECT",
    )
    limits.add_argument(
        "--shutdown-timeout",
        type=float,
        default=DEFAULT_SHUTDOWN_TIMEOUT,
        metavar="SECONDS",
        help="time sessions get to receive their ERROR on shutdown",
    )
    parser.add_argument("--log-level", default="INFO")
    return parser


def _users(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Users | None:
    """The credentials the flags give (None: none, the broker is open); exits on bad ones."""
    if (args.login is None) != (args.passcode is None):
        parser.error("--login and --passcode go together")
    if args.login is None and args.users is None:
        return None
    try:
        users = Users()
        if args.users is not None:
            with args.users:
                users = Users.parse(args.users.read(), args.users.name)
        if args.login is not None:
            users.add(args.login, args.passcode)
    except ValueError as exc:
        parser.error(str(exc))
    if not users:
        parser.error(f"no users in {args.users.name}")
    return users


def _runtime(args: argparse.Namespace) -> BrokerRuntime:
    limits = Limits(
        max_subscriptions=args.max_subscriptions,
        max_unacked=args.max_unacked,
        max_queue_backlog=args.max_queue_backlog,
    )
    return BrokerRuntime(
        Broker(limits=limits),
        hooks=CheckPasswords(args.credentials) if args.credentials is not None else None,
        heartbeat=args.heartbeat,
        max_pending_frames=args.max_pending_frames,
        max_pending_bytes=args.max_pending_bytes,
        max_frame_size=args.max_frame_size,
        max_body_size=args.max_body_size,
        connect_timeout=args.connect_timeout,
    )


async def serve(args: argparse.Namespace) -> None:
    """Bind every listener, log the ready line, and serve until SIGINT/SIGTERM."""
    runtime = _runtime(args)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            parts = []
            if args.tcp is not None:
                host, port = await nursery.start(serve_tcp, runtime, *args.tcp)
                parts.append(f"tcp={_hostport(host, port)}")
            if args.ws is not None:
                host, port = await nursery.start(
                    functools.partial(
                        serve_websocket,
                        runtime,
                        *args.ws,
                        path=args.ws_path,
                        binary=args.binary,
                        one_frame_per_message=args.one_frame_per_message,
                    )
                )
                parts.append(f"ws=ws://{_hostport(host, port)}{args.ws_path}")
            log.info("stomp broker ready %s", " ".join(parts))
            async for signum in signals:
                log.info("received %s, shutting down", signal.Signals(signum).name)
                break
            # Listeners stay open meanwhile: a late peer is refused with the same ERROR.
            await runtime.shutdown(args.shutdown_timeout)
            nursery.cancel_scope.cancel()
    log.info("stomp broker stopped")


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def main(argv: Sequence[str] | None = None) -> int:
    """Parse `argv`, run the broker, return the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    args.credentials = _users(parser, args)
    if args.tcp is None and args.ws is None:
        args.tcp = _address(DEFAULT_TCP)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    status = 0
    try:
        trio.run(serve, args)
    except* OSError as group:  # a listener could not bind
        log.error("cannot start: %s", "; ".join(str(exc) for exc in group.exceptions))
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
