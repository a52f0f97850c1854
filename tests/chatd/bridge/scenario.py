"""The fault scenario shared by the fault tests: a stream of REST sends across instances with
recording subscribers, something broken mid-stream, then the promise checked.

The promise (issue 5): every message that got a 2xx is stored once and delivered to every
live subscriber (after dedupe by messageId), never out of per-session order.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import trio

from .conftest import ALICE, BOB, Cluster, Instance, Recorder

SESSIONS = 4
PER_SESSION = 520  # 2 080 messages in flight over the scenario
FAULT_AT = 600  # acknowledged sends before the fault
DELIVERY_TIMEOUT = 60.0


@dataclass
class Stream:
    """What the senders saw: acknowledged messages, and refusals while the fault lasted."""

    cluster: Cluster
    instances: list[Instance]
    sids: list[str]
    acked: dict[str, tuple[str, int]] = field(default_factory=dict)  # messageId -> (sid, seq)
    unavailable: int = 0  # 503 answers
    transport_errors: int = 0
    reached: trio.Event = field(default_factory=trio.Event)

    async def run_session(self, index: int, sid: str) -> None:
        """Send PER_SESSION messages one after another (retrying the same clientMessageId
        until acknowledged), alternating sender and instance."""
        turn = index
        for i in range(PER_SESSION):
            caller = ALICE if i % 2 else BOB
            while True:
                inst = self.instances[turn % len(self.instances)]
                turn += 1
                try:
                    answer = await self.cluster.send(
                        inst, sid, f"{sid[:8]} #{i}", f"{sid}-{i}", caller=caller
                    )
                except httpx.TransportError:
                    self.transport_errors += 1
                    await trio.sleep(0.05)
                    continue
                if answer.status_code == 503:
                    self.unavailable += 1
                    await trio.sleep(0.05)
                    continue
                assert answer.status_code in (200, 201), answer.text
                body = answer.json()
                self.acked[body["messageId"]] = (sid, body["seq"])
                if len(self.acked) >= FAULT_AT:
                    self.reached.set()
                break


async def subscribe_all(rec: Recorder, sids: list[str]) -> None:
    for n, sid in enumerate(sids):
        await rec.subscribe(f"/topic/session.{sid}", f"t{n}")
    await rec.subscribe("/user/queue/messages", "inbox")


def delivered(rec: Recorder, sub: str) -> list[dict[str, Any]]:
    """The messages of one subscription in arrival order, duplicates (by messageId) dropped."""
    seen: set[str] = set()
    out = []
    for body in rec.bodies(sub):
        if body.get("messageId") and body["messageId"] not in seen:
            seen.add(body["messageId"])
            out.append(body)
    return out


async def run_scenario(
    cluster: Cluster,
    instances: list[Instance],
    live: list[Recorder],
    sids: list[str],
    fault: Callable[[], Awaitable[None]],
) -> Stream:
    """Send the stream, run `fault` once FAULT_AT sends were acknowledged, then check that
    every `live` recorder got every acknowledged message, in per-session order."""
    stream = Stream(cluster, instances, sids)
    async with trio.open_nursery() as nursery:
        for n, sid in enumerate(sids):
            nursery.start_soon(stream.run_session, n, sid)
        await stream.reached.wait()
        await fault()
    assert len(stream.acked) == SESSIONS * PER_SESSION

    by_session: dict[str, set[str]] = defaultdict(set)
    for mid, (sid, _) in stream.acked.items():
        by_session[sid].add(mid)

    def complete(rec: Recorder) -> bool:
        inbox = {m["messageId"] for m in delivered(rec, "inbox")}
        if not set(stream.acked) <= inbox:
            return False
        return all(
            by_session[sid] <= {m["messageId"] for m in delivered(rec, f"t{n}")}
            for n, sid in enumerate(sids)
        )

    for rec in live:
        try:
            await rec.wait(lambda rec=rec: complete(rec), seconds=DELIVERY_TIMEOUT)
        except trio.TooSlowError:
            inbox = {m["messageId"] for m in delivered(rec, "inbox")}
            missing = set(stream.acked) - inbox
            raise AssertionError(
                f"{len(missing)} acknowledged messages never reached the "
                f"inbox subscriber, e.g. {sorted(missing)[:5]}"
            ) from None
    for rec in live:
        for sub in ["inbox"] + [f"t{n}" for n in range(len(sids))]:
            seqs: dict[str, list[int]] = defaultdict(list)
            for m in delivered(rec, sub):
                seqs[m["sessionId"]].append(m["seq"])
            for sid, got in seqs.items():
                assert got == sorted(got), f"{sub}: session {sid} out of order"
    return stream


async def assert_stored_once(cluster: Cluster, stream: Stream) -> None:
    """Every session holds exactly its acknowledged messages, seq 1..n without gaps."""
    import psycopg

    def query() -> list[tuple[Any, ...]]:
        with psycopg.connect(cluster.env["CHATD_DATABASE_URL"]) as conn:
            return conn.execute(
                "SELECT session_id::text, count(*), count(DISTINCT seq), max(seq), "
                "count(DISTINCT client_msg_id) FROM chat_messages GROUP BY session_id"
            ).fetchall()

    rows = await trio.to_thread.run_sync(query)
    per_session = {sid: 0 for sid in stream.sids}
    for sid, _ in stream.acked.values():
        per_session[sid] += 1
    assert {r[0]: r[1:] for r in rows} == {sid: (n, n, n, n) for sid, n in per_session.items()}
