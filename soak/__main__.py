"""``python -m soak`` (`scripts/soak`): chatd under thousands of clients with a fault every
few minutes; prints the table of checks and exits 1 when one fails (docs/operations.md,
"Soak")."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench.targets import raise_fd_limit
from soak.report import checks, diagnostics, table
from soak.runner import Options, Run, say

ROOT = Path(__file__).resolve().parent.parent


def parse(argv: list[str]) -> Options:
    p = argparse.ArgumentParser(prog="scripts/soak", description=__doc__)
    p.add_argument("--minutes", type=float, default=20.0, help="chatting time (default 20)")
    p.add_argument("--clients", type=int, default=3000, help="clients, in pairs (default 3000)")
    p.add_argument(
        "--rate",
        type=float,
        default=150.0,
        help="messages per second offered over all pairs (default 150)",
    )
    p.add_argument(
        "--fault-every", type=float, default=120.0, help="seconds between faults (default 120)"
    )
    p.add_argument(
        "--hold",
        type=float,
        default=30.0,
        help="seconds Redis stays down and the RabbitMQ link stays cut (default 30)",
    )
    p.add_argument(
        "--pause",
        type=float,
        default=10.0,
        help="seconds an instance stays SIGSTOPped (default 10)",
    )
    p.add_argument(
        "--warmup",
        type=float,
        default=300.0,
        help="seconds of a process's life before its RSS and fds are judged (default 300: "
        "the relay's dedupe window of 65 536 message ids fills in about 3.5 min at 100 msg/s)",
    )
    p.add_argument(
        "--heartbeat-ms",
        type=int,
        default=3000,
        help="STOMP heart-beats clients ask the server for (default 3000; a client "
        "gives up after 2.5 intervals of silence, so a 10 s pause is noticed)",
    )
    p.add_argument(
        "--client-heartbeat-ms",
        type=int,
        default=10000,
        help="STOMP heart-beats clients offer to send (default 10000, stompjs's default; "
        "the server gives up after 1.5 intervals of silence)",
    )
    p.add_argument(
        "--rest-share",
        type=float,
        default=0.3,
        help="share of sends through REST, the rest /app/chat.send (default 0.3)",
    )
    p.add_argument(
        "--sockjs-share",
        type=float,
        default=0.1,
        help="share of clients on SockJS, half xhr-streaming, half xhr-polling",
    )
    p.add_argument(
        "--receipt-every",
        type=int,
        default=4,
        help="a delivered receipt every N received messages, seen every 2N",
    )
    p.add_argument(
        "--redis",
        choices=["auto", "on", "off"],
        default="auto",
        help="use a private Redis (auto: when this chatd knows [redis] url)",
    )
    p.add_argument(
        "--workdir", type=Path, default=None, help="logs go here (default soak-results/<time>)"
    )
    p.add_argument("--seed", type=int, default=22)
    p.add_argument(
        "--generators",
        type=int,
        default=3,
        help="load-generator processes the clients are split over (default 3)",
    )
    a = p.parse_args(argv)
    if a.clients < 2 or a.clients % 2:
        p.error("--clients must be an even number >= 2")
    workdir = a.workdir or ROOT / "soak-results" / time.strftime("%Y%m%d-%H%M%S")
    return Options(
        a.minutes,
        a.clients,
        a.rate,
        a.fault_every,
        a.hold,
        a.pause,
        a.warmup,
        a.heartbeat_ms,
        a.client_heartbeat_ms,
        a.rest_share,
        a.sockjs_share,
        a.receipt_every,
        a.redis,
        workdir,
        a.seed,
        a.generators,
    )


def main(argv: list[str] | None = None) -> int:
    options = parse(sys.argv[1:] if argv is None else argv)
    say(f"open-file limit {raise_fd_limit()}; logs in {options.workdir}")
    interrupted = False
    try:
        outcome = Run(options).execute()
    except* KeyboardInterrupt:
        interrupted = True
    if interrupted:  # the run's nursery stopped the private services on its way out
        say("interrupted: no table")
        return 130
    rows, ok = checks(outcome)
    text = table(outcome, rows)
    print(text, flush=True)
    (options.workdir / "table.md").write_text(text + "\n")
    (options.workdir / "diagnostics.json").write_text(json.dumps(diagnostics(outcome), indent=1))
    say("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
