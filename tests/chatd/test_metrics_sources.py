"""The scrape-time sources a merge wires in (profiles, bridge, SockJS), and a scrape that
survives a broken source or an unreachable store."""

from __future__ import annotations

import enum
import gc
import threading
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import trio
from prometheus_client.parser import text_string_to_metric_families

from chatd.domain.models import Participant
from chatd.observability.metrics import Metrics
from chatd.storage import open_store
from chatd.storage.base import append_one
from tests.waiting import wait_until


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


def test_profiles_bridge_and_sockjs_are_read_at_scrape_time() -> None:
    metrics = Metrics()
    cache = SimpleNamespace(hits=0, misses=0)
    breaker = SimpleNamespace(state=BreakerState.CLOSED)
    bridge = SimpleNamespace(connected=False, published=0, consumed=0, duplicates=0, bindings=0)
    open_sessions = [3]
    metrics.attach_profiles(cache, breaker)
    metrics.attach_bridge(bridge)
    metrics.attach_sockjs(lambda: open_sessions[0])
    cache.hits, cache.misses = 7, 2
    breaker.state = BreakerState.HALF_OPEN
    bridge.connected = True
    bridge.published, bridge.consumed, bridge.duplicates, bridge.bindings = 4, 9, 1, 3
    open_sessions[0] = 5
    got = samples(metrics)
    assert got[("chatd_profile_cache_hits_total", ())] == 7
    assert got[("chatd_profile_cache_misses_total", ())] == 2
    states = {
        dict(labels)["state"]: v
        for (name, labels), v in got.items()
        if name == "chatd_profile_breaker_state"
    }
    assert states == {"closed": 0, "open": 0, "half_open": 1}
    assert got[("chatd_bridge_connected", ())] == 1
    assert got[("chatd_bridge_published_total", ())] == 4
    assert got[("chatd_bridge_consumed_total", ())] == 9
    assert got[("chatd_bridge_duplicates_total", ())] == 1
    assert got[("chatd_bridge_bindings", ())] == 3
    assert got[("chatd_sockjs_sessions_open", ())] == 5


def test_garbage_collections_are_timed_by_generation_while_watched() -> None:
    metrics = Metrics()
    with metrics.watching_gc():
        gc.collect(2)
        gc.collect(0)
        gc.collect(0)
    gc.collect(2)  # after the block: not counted
    got = samples(metrics)
    counts = {
        dict(labels)["generation"]: v
        for (name, labels), v in got.items()
        if name == "chatd_gc_pause_seconds_count"
    }
    # a young collection may also have run by itself meanwhile
    assert counts["2"] == 1
    assert counts["0"] >= 2
    assert got[("chatd_gc_pause_seconds_sum", (("generation", "2"),))] > 0


def test_components_not_attached_export_nothing() -> None:
    names = {name for name, _ in samples(Metrics())}
    assert not any(
        n.startswith(("chatd_bridge_connected", "chatd_profile_", "chatd_sockjs")) for n in names
    )


def test_a_broken_source_does_not_break_the_scrape() -> None:
    metrics = Metrics()
    metrics.attach_bridge(SimpleNamespace())  # no `connected`: raises at scrape time
    metrics.attach_sockjs(lambda: 2)
    got = samples(metrics)
    assert got[("chatd_sockjs_sessions_open", ())] == 2
    assert ("chatd_bridge_connected", ()) not in got


async def test_outbox_gauges_keep_their_last_value_when_the_store_is_down(
    tmp_path: Path,
) -> None:
    metrics = Metrics()
    store = open_store(f"sqlite:///{tmp_path / 'c.sqlite3'}")
    await store.open()
    await store.migrate()
    metrics.attach_store(store)
    now = datetime.now(UTC)
    ann, bob = (
        Participant("p1", "ann@example.com", "Ann"),
        Participant("p2", "bob@example.com", "Bob"),
    )
    session = await store.get_or_create_session("demo", ann, bob, now=now)
    await append_one(store, session.id, ann, "hi", "c-1", now)
    await metrics.refresh()
    await store.aclose()
    await metrics.refresh()  # logged, not raised; the last known values stay
    got = samples(metrics)
    assert (got[("chatd_outbox_pending", ())], got[("chatd_outbox_dead", ())]) == (3, 0)
    assert got[("chatd_db_pool_size", ())] >= 2


def test_build_info_names_the_release() -> None:
    (labels,) = [dict(labels) for name, labels in samples(Metrics()) if name == "chatd_build_info"]
    assert labels["version"] not in ("", "unknown")
    assert labels["python"].count(".") == 2


async def test_store_calls_waiting_for_a_connection_are_exported(
    store_url: str, nursery: trio.Nursery
) -> None:
    """A loaded instance's store calls queue for a connection before they run: the gauge
    says how many wait, beside how many connections are busy."""
    metrics = Metrics()
    async with open_store(store_url, pool_size=1) as store:
        metrics.attach_store(store)
        # one connection (SQLite: the one writer), held until released
        call = getattr(store, "_write", None) or store._run  # type: ignore[attr-defined]
        release = threading.Event()
        nursery.start_soon(call, lambda _conn: release.wait(10))
        await wait_until(lambda: store.pool_usage()[0] == 1)
        for _ in range(2):
            nursery.start_soon(call, lambda _conn: None)
        try:
            await wait_until(lambda: store.pool_usage()[::2] == (1, 2))
            got = samples(metrics)
            assert got[("chatd_db_pool_waiting", ())] == 2
            assert got[("chatd_db_pool_in_use", ())] == 1
        finally:
            release.set()
        await wait_until(lambda: store.pool_usage()[::2] == (0, 0))
