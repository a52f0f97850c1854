"""The soak harness's own rules that its runs depend on (no services): how clients are
spread over instances, transports and generator processes, and how the processes' figures
add up. Each guards a way an earlier run measured the harness instead of chatd."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import trio
import trio.testing

from soak.client import BUSY_BACKOFF_MAX, Ack, Client, Intent, Stats, busy_delay
from soak.runner import Options, Run
from soak.shard import ClientSpec, LineReader, SharedClock
from soak.transports import WS, XHR_POLLING, XHR_STREAMING

ROOT = Path(__file__).resolve().parents[2]


def options(**changes: object) -> Options:
    base: dict[str, object] = {
        "minutes": 1.0,
        "clients": 400,
        "rate": 100.0,
        "fault_every": 60.0,
        "hold": 5.0,
        "pause": 5.0,
        "warmup": 10.0,
        "heartbeat_ms": 3000,
        "client_heartbeat_ms": 10000,
        "rest_share": 0.3,
        "sockjs_share": 0.1,
        "receipt_every": 4,
        "redis": "off",
        "workdir": Path("unused"),
        "seed": 1,
        "generators": 3,
    }
    base.update(changes)
    return Options(**base)  # type: ignore[arg-type]


def specs(run: Run, count: int) -> list[ClientSpec]:
    return [
        ClientSpec(i, f"u{i}@x.io", "t", f"s{i // 2}", i % 2, "h", 1, run._kind(i))
        for i in range(count)
    ]


def test_sockjs_clients_are_spread_over_both_instances_and_both_transports() -> None:
    run = Run(options())
    clients = specs(run, 400)
    by = Counter((c.instance, c.kind) for c in clients)
    # 10 % on SockJS, as many on each instance, streaming and polling alike (chosen per
    # client, all of them landed on the first instance)
    for instance in (0, 1):
        assert by[(instance, XHR_STREAMING)] == by[(instance, XHR_POLLING)] == 10
        assert by[(instance, WS)] == 180


def test_generator_processes_get_whole_pairs_and_their_share_of_the_rate() -> None:
    run = Run(options(clients=14, generators=3))
    run.db_url = "unused"
    shards = run._shards(specs(run, 14))
    assert [len(s.spec.clients) for s in shards] == [6, 4, 4]
    for shard in shards:
        indexes = [c.index for c in shard.spec.clients]
        assert all(indexes[k] % 2 == 0 and indexes[k + 1] == indexes[k] + 1 for k in (0, 2))
    assert sum(s.spec.rate for s in shards) == 100.0
    assert sorted(c.index for s in shards for c in s.spec.clients) == list(range(14))


def test_the_figures_of_several_processes_add_up() -> None:
    one, two = Stats(), Stats()
    one.acks["a"] = Ack("a", "m1", "s", 1, 0, 5.0, 0.1)
    two.acks["b"] = Ack("b", "m2", "s", 2, 1, 6.0, 0.2)
    one.busy["SERVICE_UNAVAILABLE"], two.busy["SERVICE_UNAVAILABLE"] = 2, 3
    one.last_ack, two.last_ack = {0: 5.0, 1: 9.0}, {0: 7.0}
    one.error_frames.append((1.0, "x", 0, WS))
    two.unanswered, two.skipped = 4, 1
    one.merge(two)
    assert set(one.acks) == {"a", "b"}
    assert one.busy["SERVICE_UNAVAILABLE"] == 5
    assert one.last_ack == {0: 7.0, 1: 9.0}
    assert len(one.error_frames) == 1
    assert (one.unanswered, one.skipped) == (4, 1)


async def test_a_shard_reads_commands_line_by_line_whatever_the_chunks() -> None:
    send, receive = trio.testing.memory_stream_pair()
    lines = LineReader(receive)
    await send.send_all(b"ch")
    await send.send_all(b"at\nstop\nset")
    await send.send_all(b"tle\n")
    await send.aclose()
    assert [await lines.line() for _ in range(4)] == ["chat", "stop", "settle", None]


def test_the_shared_clock_reads_the_same_in_another_process() -> None:
    """Times the shards record (acknowledgements, ERROR frames) are compared with the
    parent's (faults); trio's own clock starts at a random offset in each process."""
    code = (
        "import trio\nfrom soak.shard import SharedClock\n"
        "async def now():\n    return trio.current_time()\n"
        "print(trio.run(now, clock=SharedClock()))"
    )
    before = SharedClock().current_time()
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    after = SharedClock().current_time()
    assert before <= float(out.stdout) <= after


def test_a_client_refused_busy_waits_at_least_retry_after_and_backs_off() -> None:
    delays = [busy_delay(1.0, streak) for streak in range(1, 9)]
    assert all(d >= lo for d, lo in zip(delays, (1, 2, 4, 8, 16, 30, 30, 30), strict=True))
    assert all(d <= BUSY_BACKOFF_MAX * 1.5 for d in delays)


class RefusedClient(Client):
    """A client whose every send is refused busy, counting its attempts."""

    attempts = 0

    async def _stomp(self, transport: Any, intent: Intent) -> dict[str, Any]:
        self.attempts += 1
        await trio.sleep(0.2)  # the answer takes a while
        return {"_ok": False, "status": "SERVICE_UNAVAILABLE", "retryAfter": "1"}


async def test_a_client_told_to_stop_sending_tries_nothing_more(autojump_clock: object) -> None:
    """The settle phase stops every client's sends before its final check: a retry stored
    after it would be counted as stored and never delivered (the soak's false "lost")."""
    client = RefusedClient(
        0,
        "u0@x.io",
        "t",
        "s0",
        0,
        "h",
        1,
        WS,
        Stats(),
        heartbeat_ms=3000,
        client_heartbeat_ms=10000,
        receipt_every=4,
    )
    client.offer(Intent("0-1", "stomp", "hello"))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client._sender, None)
        await trio.sleep(0.1)
        assert client.sending  # the first try is on its way...
        client.stop_sending()
        await trio.sleep(0.2)
        assert not client.sending  # ...and ends
        await trio.sleep(10 * BUSY_BACKOFF_MAX)
        assert client.attempts == 1
        assert len(client.pending) == 1  # counted as never acknowledged
        nursery.cancel_scope.cancel()
