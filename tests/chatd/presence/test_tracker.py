"""`GraceTracker`: which local comings and goings become presence changes (pure, no clock)."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from chatd.domain.presence import GraceTracker, Presence

SEEN = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def test_arrival_is_announced_once() -> None:
    tracker = GraceTracker(grace=5)
    tracker.connected("a@x.io")
    assert tracker.arrivals() == ["a@x.io"]
    assert tracker.arrivals() == []
    assert tracker.present() == {"a@x.io"}


def test_departure_waits_for_the_grace_period() -> None:
    tracker = GraceTracker(grace=5)
    tracker.connected("a@x.io")
    tracker.arrivals()
    tracker.disconnected("a@x.io", 100.0, SEEN)
    assert tracker.next_deadline() == 105.0
    assert tracker.due(104.9) == []
    assert tracker.is_present("a@x.io")
    assert tracker.due(105.0) == [("a@x.io", SEEN)]
    assert not tracker.is_present("a@x.io")
    assert tracker.next_deadline() is None


def test_reconnect_within_grace_announces_nothing() -> None:
    tracker = GraceTracker(grace=5)
    tracker.connected("a@x.io")
    tracker.arrivals()
    tracker.disconnected("a@x.io", 100.0, SEEN)
    tracker.connected("a@x.io")
    assert tracker.arrivals() == []
    assert tracker.due(1000.0) == []
    assert tracker.present() == {"a@x.io"}


def test_deadlines_come_due_in_order_whatever_the_reconnects() -> None:
    tracker = GraceTracker(grace=5)
    for email in ("a@x.io", "b@x.io"):
        tracker.connected(email)
    tracker.disconnected("a@x.io", 100.0, SEEN)
    tracker.disconnected("b@x.io", 101.0, SEEN)
    tracker.connected("a@x.io")
    tracker.disconnected("a@x.io", 102.0, SEEN)  # a's deadline is now after b's
    assert tracker.next_deadline() == 106.0
    assert [e for e, _ in tracker.due(106.0)] == ["b@x.io"]
    assert [e for e, _ in tracker.due(107.0)] == ["a@x.io"]


def test_presence_json() -> None:
    assert Presence("a@x.io", False, SEEN).to_json() == {
        "event": "presence",
        "email": "a@x.io",
        "online": False,
        "lastSeen": "2026-12-01T12:00:00.000000Z",
    }
    assert Presence("a@x.io", True).to_json()["lastSeen"] is None


@given(
    st.lists(
        st.tuples(st.sampled_from(["connect", "disconnect", "due"]), st.integers(0, 4)),
        max_size=60,
    )
)
def test_departures_come_due_in_deadline_order_as_a_model_says(
    steps: list[tuple[str, int]],
) -> None:
    """Against a plain model (user -> deadline): whatever the interleaving of comings,
    goings and `due` calls on a clock that only moves on, `due` returns exactly the users
    whose grace ended, earliest deadline first, and forgets them."""
    tracker = GraceTracker(grace=5)
    leaving: dict[str, float] = {}
    now = 0.0
    for action, who in steps:
        email = f"u{who}@x.io"
        now += 1.5
        if action == "connect":
            tracker.connected(email)
            leaving.pop(email, None)
        elif action == "disconnect":
            tracker.disconnected(email, now, SEEN)
            leaving[email] = now + 5
        else:
            expected = sorted((d, e) for e, d in leaving.items() if d <= now)
            assert tracker.due(now) == [(e, SEEN) for _, e in expected]
            for _, e in expected:
                del leaving[e]
        first = min(leaving.values(), default=None)
        assert tracker.next_deadline() == first
