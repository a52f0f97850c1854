"""`PresenceService` with the local state over a real SQLite store, on trio's MockClock moved by
hand (`mock_clock.jump`: store threads take real time, so nothing may jump on its own): grace periods pass without waiting, and every update a peer would get is
recorded."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trio
import trio.testing

from chatd.domain.errors import BadRequest
from chatd.domain.models import Participant
from chatd.presence import PresenceService
from chatd.presence.state import LocalPresence
from chatd.storage import Store, open_store

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
ANN, BOB, CAT, DAN = (
    Participant(f"p{i}", f"{n}@example.com", n) for i, n in enumerate(("ann", "bob", "cat", "dan"))
)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with open_store(f"sqlite:///{tmp_path / 'p.sqlite3'}") as opened:
        await opened.migrate()
        await opened.get_or_create_session("buy", ANN, BOB, now=T0)
        await opened.get_or_create_session("buy", CAT, DAN, now=T0)
        yield opened


class Running:
    def __init__(self, service: PresenceService) -> None:
        self.service = service
        self.sent: list[tuple[str, dict[str, object]]] = []
        service.publish = lambda key, body: self.sent.append((key, json.loads(body)))

    def take(self) -> list[tuple[str, str, bool]]:
        out = [(key, str(body["email"]), bool(body["online"])) for key, body in self.sent]
        self.sent.clear()
        return out


async def start(nursery: trio.Nursery, store: Store, **options: object) -> Running:
    clock_now = [T0]
    service = PresenceService(store, clock=lambda: clock_now[0], **options)  # type: ignore[arg-type]
    running = Running(service)
    await nursery.start(service.run)
    return running


async def settle(service: PresenceService) -> None:
    """Return once the runner has done everything it was told and waits again (its store
    calls run in threads, which `wait_all_tasks_blocked` does not wait for)."""
    deadline = time.monotonic() + 30
    while True:
        await trio.testing.wait_all_tasks_blocked()
        if service.idle:
            return
        assert time.monotonic() < deadline, "the presence runner never went idle"
        await trio.to_thread.run_sync(lambda: None)


async def test_peers_online_get_updates_strangers_never(
    nursery: trio.Nursery, store: Store, mock_clock: trio.testing.MockClock
) -> None:
    running = await start(nursery, store, grace=5)
    presence = running.service
    presence.principal_active(ANN.email, True)
    await settle(presence)
    # Bob, Ann's only peer, may be connected to another instance: this instance alone cannot
    # know, so he is told (the local state is not `complete`).
    assert running.take() == [("user:bob@example.com:/queue/presence", ANN.email, True)]
    presence.principal_active(BOB.email, True)
    presence.principal_active(CAT.email, True)  # Cat shares no chat with Ann or Bob
    await settle(presence)
    assert running.take() == [
        ("user:ann@example.com:/queue/presence", BOB.email, True),
        ("user:dan@example.com:/queue/presence", CAT.email, True),
    ]
    presence.principal_active(BOB.email, False)
    await settle(presence)
    mock_clock.jump(4.9)
    await settle(presence)
    assert running.take() == []
    mock_clock.jump(0.1)
    await settle(presence)
    [(key, body)] = running.sent
    assert (key, body["email"], body["online"]) == (
        "user:ann@example.com:/queue/presence",
        BOB.email,
        False,
    )
    assert body["lastSeen"] == "2026-12-01T12:00:00.000000Z"


async def test_reconnect_within_grace_sends_no_offline_online_pair(
    nursery: trio.Nursery, store: Store, mock_clock: trio.testing.MockClock
) -> None:
    running = await start(nursery, store, grace=5)
    presence = running.service
    presence.principal_active(ANN.email, True)
    presence.principal_active(BOB.email, True)
    await settle(presence)
    assert running.take() != []
    for _ in range(3):
        presence.principal_active(BOB.email, False)
        await settle(presence)
        mock_clock.jump(4.9)
        await settle(presence)
        presence.principal_active(BOB.email, True)
        await settle(presence)
    mock_clock.jump(60)
    await settle(presence)
    assert running.take() == []
    assert (await presence.of([BOB.email]))[BOB.email].online


async def test_snapshot_and_query_answer_for_peers_only(
    nursery: trio.Nursery, store: Store, mock_clock: trio.testing.MockClock
) -> None:
    running = await start(nursery, store, grace=0)
    presence = running.service
    presence.principal_active(BOB.email, True)
    presence.principal_active(DAN.email, True)
    await settle(presence)
    assert [(p.email, p.online) for p in await presence.snapshot(ANN.email)] == [(BOB.email, True)]
    found = await presence.query(ANN.email, f"{BOB.email}, {DAN.email},nobody@example.com")
    assert [(p.email, p.online) for p in found] == [(BOB.email, True)]
    assert await presence.query(CAT.email, BOB.email) == []
    presence.principal_active(BOB.email, False)
    await settle(presence)
    [bob] = await presence.query(ANN.email, BOB.email.upper())
    assert (bob.online, bob.last_seen) == (False, T0)


@pytest.mark.parametrize(
    "emails", [None, "", "not-an-email", ",".join(f"u{i}@example.com" for i in range(101))]
)
async def test_query_refuses_malformed_lists(store: Store, emails: str | None) -> None:
    with pytest.raises(BadRequest):
        await PresenceService(store).query(ANN.email, emails)


async def test_disabled_tracks_publishes_and_answers_nothing(
    nursery: trio.Nursery, store: Store, mock_clock: trio.testing.MockClock
) -> None:
    running = await start(nursery, store, enabled=False)
    presence = running.service
    presence.principal_active(ANN.email, True)
    presence.principal_active(BOB.email, True)
    await trio.testing.wait_all_tasks_blocked()
    assert presence.tracker.present() == set()
    assert running.take() == []
    assert await presence.snapshot(ANN.email) == []
    assert await presence.query(ANN.email, BOB.email) == []
    assert await presence.of([BOB.email]) == {}
    presence.stop()


async def test_a_store_outage_drops_updates_not_the_runner(
    nursery: trio.Nursery, store: Store, mock_clock: trio.testing.MockClock
) -> None:
    running = await start(nursery, store, grace=0)
    presence = running.service
    presence.principal_active(ANN.email, True)
    await settle(presence)
    running.take()
    await store.aclose()  # every store call now fails: Unavailable
    for active in (True, False):
        presence.principal_active(BOB.email, active)
        await settle(presence)
    assert presence.failures == 2  # both of Bob's changes dropped, the runner still runs
    assert running.take() == []
    assert presence.tracker.present() == {ANN.email}


class SlowArrivals(LocalPresence):
    """Arrivals wait until the test lets them through; renewals are recorded."""

    def __init__(self) -> None:
        super().__init__()
        self.arrivals_go = trio.Event()
        self.renewals: list[float] = []

    async def arrive(self, email: str) -> bool:
        await self.arrivals_go.wait()
        return await super().arrive(email)

    async def renew(self, now: datetime) -> bool:
        self.renewals.append(trio.current_time())
        return True


async def test_renewals_keep_their_pace_while_a_step_is_busy(
    nursery: trio.Nursery, store: Store, mock_clock: trio.testing.MockClock
) -> None:
    """The soak: after a restart an instance announced 1 500 arrivals, one Redis call each,
    and renewed its entries only between steps; under load the step outlasted the lapse and
    the other instance declared all its users offline. Renewals go on whatever the step."""
    state = SlowArrivals()
    running = await start(nursery, store, state=state, ttl=30)
    presence = running.service
    presence.principal_active(ANN.email, True)  # the step now waits on this arrival
    for _ in range(6):  # a minute
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(10)
    await trio.testing.wait_all_tasks_blocked()
    assert len(state.renewals) >= 5  # every TTL/3, not once the step is over
    state.arrivals_go.set()
    await settle(presence)
    assert running.take() == [(f"user:{BOB.email}:/queue/presence", ANN.email, True)]
