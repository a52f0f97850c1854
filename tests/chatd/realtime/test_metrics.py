"""``/metrics`` after a scripted chat: REST and STOMP sends, live delivery, refusals.

Every assertion is a *difference* between two scrapes (or a value that must be exact), so
what the app did before the script (the init request, probes) cannot make a test pass.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from chatd.config import LimitsConfig

from .conftest import (
    ALICE,
    BOB,
    TIMEOUT,
    Chat,
    StompPy,
    chat_config,
    run,
    start_chat,
    stomppy_client,
)

pytestmark = pytest.mark.timeout(90)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(chat: Chat) -> Samples:
    answer = await chat.client.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def delta(after: Samples, before: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


async def eventually(chat: Chat, check: object, what: str) -> Samples:
    """Scrape until `check(samples)` holds (published counts settle after delivery)."""
    with trio.move_on_after(TIMEOUT):
        while True:
            samples = await scrape(chat)
            if check(samples):  # type: ignore[operator]
                return samples
            await trio.sleep(0.05)
    raise AssertionError(f"metrics never showed {what}")


async def test_scripted_chat_moves_every_counter_by_its_amount(chat: Chat) -> None:
    sid = await chat.init()
    alice, bob = await stomppy_client(chat, ALICE), await stomppy_client(chat, BOB)
    try:
        topic = await run(bob.subscribe, f"/topic/session.{sid}")
        inbox = await run(bob.subscribe, "/user/queue/messages")
        acks = await run(alice.subscribe, "/user/queue/ack")
        before = await scrape(chat)
        assert value(before, "chatd_websocket_sessions_open") == 2
        assert value(before, "chatd_stomp_sessions_open") == 2

        for n in range(3):
            await chat.send(sid, f"rest {n}", f"r-{n}")
        await chat.send(sid, "rest 0", "r-0")  # a repeat: answered 200, not a new message
        for n in range(2):
            frame = {"sessionId": sid, "content": f"stomp {n}", "clientMessageId": f"s-{n}"}
            await run(alice.send, "/app/chat.send", frame)
        for _ in range(5):
            await run(bob.json, topic)
            await run(bob.json, inbox)
        for _ in range(2):
            await run(alice.json, acks)

        # 5 messages x 3 outbox rows (topic, two user queues) are published, none pending.
        after = await eventually(
            chat,
            lambda s: (
                delta(s, before, "chatd_outbox_published_total") == 15
                and value(s, "chatd_outbox_pending") == 0
            ),
            "15 rows published",
        )
    finally:
        await run(alice.close)
        await run(bob.close)

    assert delta(after, before, "chatd_messages_sent_total", path="rest") == 3
    assert delta(after, before, "chatd_messages_sent_total", path="stomp") == 2
    assert delta(after, before, "chatd_send_latency_seconds_count", path="rest") == 3
    assert delta(after, before, "chatd_send_latency_seconds_count", path="stomp") == 2
    assert delta(after, before, "chatd_stomp_frames_in_total", command="SEND") == 2
    # bob: 5 on the topic + 5 on his queue; alice: 2 acks. Alice's own queue has no subscriber.
    assert delta(after, before, "chatd_delivered_frames_total") == 12
    assert delta(after, before, "chatd_stomp_frames_out_total", command="MESSAGE") == 12
    assert delta(after, before, "chatd_outbox_publish_latency_seconds_count") == 15
    assert delta(after, before, "chatd_http_requests_total", method="POST", status="201") == 3
    assert delta(after, before, "chatd_http_requests_total", method="POST", status="200") == 1
    assert value(after, "chatd_outbox_dead") == 0
    assert value(after, "chatd_db_pool_size") >= 1
    assert 0 <= value(after, "chatd_db_pool_in_use") <= value(after, "chatd_db_pool_size")

    closed = await eventually(
        chat, lambda s: value(s, "chatd_websocket_sessions_open") == 0, "the WebSockets closed"
    )
    assert value(closed, "chatd_stomp_sessions_open") == 0


async def test_refusals_are_counted_by_path_and_reason(
    nursery: trio.Nursery, tmp_path: Path, key_pair: tuple[bytes, Path]
) -> None:
    url = f"sqlite:///{tmp_path / 'chat.sqlite3'}"
    config = chat_config(tmp_path, url, key_pair[1])
    config = replace(config, limits=LimitsConfig(send_burst=2, sends_per_second=0.001))
    chat = await start_chat(nursery, config, key_pair[0])
    async with chat.client:
        sid = await chat.init()
        alice = await stomppy_client(chat, ALICE)
        try:
            errors = await run(alice.subscribe, "/user/queue/error")
            before = await scrape(chat)
            await chat.send(sid, "one", "c-1")
            await chat.send(sid, "two", "c-2")
            refused = await chat.client.post(
                "/api/chat/message",
                headers=chat.auth(ALICE),
                json={"sessionId": sid, "content": "three", "clientMessageId": "c-3"},
            )
            assert refused.status_code == 429
            frame = {"sessionId": sid, "content": "four", "clientMessageId": "c-4"}
            await run(alice.send, "/app/chat.send", frame)
            assert (await run(alice.json, errors))[1]["status"] == "TOO_MANY_REQUESTS"

            anonymous = StompPy(chat, None)
            await run(anonymous.connect, wait=False)
            assert (await run(anonymous.error)).headers["message"] == "unauthenticated"
            after = await scrape(chat)
        finally:
            await run(alice.close)
        chat.scope.cancel()

    assert delta(after, before, "chatd_rate_limit_refusals_total", path="rest") == 1
    assert delta(after, before, "chatd_rate_limit_refusals_total", path="stomp") == 1
    assert delta(after, before, "chatd_messages_sent_total", path="rest") == 2
    assert delta(after, before, "chatd_stomp_errors_total", reason="unauthenticated") == 1
    assert delta(after, before, "chatd_stomp_frames_out_total", command="ERROR") == 1
    assert delta(after, before, "chatd_http_requests_total", method="POST", status="429") == 1


async def test_request_id_is_echoed_or_generated(sqlite_chat: Chat) -> None:
    client = sqlite_chat.client
    given = await client.get("/health/live", headers={"X-Request-ID": "lb-1234.abc"})
    assert given.headers["X-Request-ID"] == "lb-1234.abc"
    fresh = [await client.get("/health/live") for _ in range(2)]
    ids = {answer.headers["X-Request-ID"] for answer in fresh}
    assert len(ids) == 2
    assert all(len(i) >= 16 for i in ids)
    # An id that could forge log lines is replaced, and refused requests get one too.
    hostile = await client.get("/api/chat/sessions", headers={"X-Request-ID": "x" * 200})
    assert hostile.status_code == 401
    assert hostile.headers["X-Request-ID"] not in ("", "x" * 200)


async def test_two_apps_in_one_process_keep_their_own_numbers(
    sqlite_chat: Chat, nursery: trio.Nursery, tmp_path: Path, key_pair: tuple[bytes, Path]
) -> None:
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    config = chat_config(other_dir, f"sqlite:///{other_dir / 'c.sqlite3'}", key_pair[1])
    other = await start_chat(nursery, config, key_pair[0])
    async with other.client:
        before = await scrape(other)
        sid = await sqlite_chat.init()
        await sqlite_chat.send(sid, "only on the first", "c-1")
        after = await scrape(other)
        mine = await scrape(sqlite_chat)
    other.scope.cancel()
    assert delta(after, before, "chatd_messages_sent_total", path="rest") == 0
    assert value(mine, "chatd_messages_sent_total", path="rest") == 1
