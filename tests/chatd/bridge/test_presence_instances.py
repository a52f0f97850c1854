"""Presence across two ``chatd serve`` processes sharing PostgreSQL, RabbitMQ and Redis: a user
connecting on one instance is seen online by a peer on the other, and a user of an instance
killed with SIGKILL is seen offline within ``[presence] ttl_seconds``."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import trio

from .conftest import ALICE, BOB, Cluster, Recorder, recorder

pytestmark = [pytest.mark.timeout(120)]

TTL = 3.0
PRESENCE = "/user/queue/presence"


def presence(rec: Recorder, sub_id: str) -> list[tuple[str, bool]]:
    return [(b["email"], b["online"]) for b in rec.bodies(sub_id)]


async def test_presence_crosses_instances_and_a_killed_instance_lapses(
    nursery: trio.Nursery, cluster: Cluster, redis_url: str, redis_prefix: str
) -> None:
    env = {
        "CHATD_REDIS_URL": redis_url,
        "CHATD_REDIS__KEY_PREFIX": redis_prefix,
        "CHATD_PRESENCE__TTL_SECONDS": str(TTL),
        "CHATD_PRESENCE__GRACE_SECONDS": "0.2",
    }
    a = await cluster.add(**env)
    b = await cluster.add(**env)
    await cluster.init(a, ALICE, BOB)

    alice = await recorder(nursery, cluster, b, ALICE)
    await alice.subscribe(PRESENCE, "p")
    await alice.wait(lambda: presence(alice, "p") == [(BOB, False)])  # the snapshot

    await recorder(nursery, cluster, a, BOB)  # Bob connects on the other instance
    await alice.wait(lambda: presence(alice, "p") == [(BOB, False), (BOB, True)])

    # A second connection of Alice on B: its snapshot comes from Redis, where A wrote Bob.
    again = await recorder(nursery, cluster, b, ALICE)
    await again.subscribe(PRESENCE, "q")
    await again.wait(lambda: presence(again, "q") == [(BOB, True)])

    a.kill()  # SIGKILL: A never says goodbye
    killed = time.monotonic()
    await alice.wait(lambda: len(presence(alice, "p")) == 3, seconds=TTL + 5)
    took = time.monotonic() - killed
    last: dict[str, Any] = alice.bodies("p")[-1]
    assert (last["email"], last["online"]) == (BOB, False)
    assert last["lastSeen"] is not None
    assert took <= TTL + 0.5, f"offline after {took:.1f} s, TTL {TTL} s"
    answer = await cluster.client.get(
        f"{b.http}/api/chat/presence", params={"emails": BOB}, headers=cluster.auth(ALICE)
    )
    assert json.loads(answer.text)["presence"] == [
        {"email": BOB, "online": False, "lastSeen": last["lastSeen"]}
    ]


async def test_without_redis_updates_still_cross_through_rabbitmq(
    nursery: trio.Nursery, cluster: Cluster
) -> None:
    env = {"CHATD_PRESENCE__GRACE_SECONDS": "0.2"}
    a = await cluster.add(**env)
    b = await cluster.add(**env)
    await cluster.init(a, ALICE, BOB)
    alice = await recorder(nursery, cluster, b, ALICE)
    await alice.subscribe(PRESENCE, "p")
    await alice.wait(lambda: presence(alice, "p") == [(BOB, False)])
    bob = await recorder(nursery, cluster, a, BOB)  # B cannot see A's users: A tells anyway
    await alice.wait(lambda: presence(alice, "p") == [(BOB, False), (BOB, True)])
    await bob.ws.aclose()
    await alice.wait(lambda: presence(alice, "p")[-1] == (BOB, False))
