"""Routing keys derived from destinations, and the duplicate filter (no RabbitMQ needed)."""

from __future__ import annotations

import re
from urllib.parse import unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chatd.bridge.keys import Dedupe, binding_destination, binding_key, escape_word, routing_key

WORD = re.compile(r"^[A-Za-z0-9%@+_-]+$")  # no '.', '*', '#': one literal topic word
SID = "0b6f3c1e-5e7a-4c8e-9a53-2f4f0e6f8f11"


@pytest.mark.parametrize(
    ("destination", "key"),
    [
        (f"/topic/session.{SID}", f"topic.session%2E{SID}"),
        ("user:bob@example.com:/queue/messages", "user.bob@example%2Ecom.%2Fqueue%2Fmessages"),
        ("user:a.b#c*d@x.io:/queue/receipts", "user.a%2Eb%23c%2Ad@x%2Eio.%2Fqueue%2Freceipts"),
        ("/queue/jobs", "other.%2Fqueue%2Fjobs"),
    ],
)
def test_known_destinations_map_to_keys_of_literal_words(destination: str, key: str) -> None:
    assert routing_key(destination) == key
    assert all(WORD.match(word) for word in key.split("."))


def test_a_name_with_wildcards_cannot_widen_or_forge_another_users_key() -> None:
    bob = routing_key("user:bob@example.com:/queue/messages")
    for name in (
        "#",
        "*",
        "*@example.com",
        "bob@example.com:/queue/messages.#",
        "bob@example.com.user.x",
        "bob@example%2Ecom",
    ):
        forged = routing_key(f"user:{name}:/queue/messages")
        assert forged != bob
        assert "#" not in forged
        assert "*" not in forged
        assert len(forged.split(".")) == 3


@given(st.text(min_size=1, max_size=60))
def test_escaping_gives_one_literal_word_that_decodes_back(text: str) -> None:
    word = escape_word(text)
    assert WORD.match(word)
    assert word.startswith("%h") or unquote(word) == text


@given(st.text(min_size=1, max_size=40))
def test_no_short_name_collides_with_a_digested_one(text: str) -> None:
    long_name = "y" * 200
    assert escape_word(text) != escape_word(long_name)
    assert escape_word(escape_word(long_name)) != escape_word(long_name)


@given(st.text(min_size=1, max_size=40), st.text(min_size=1, max_size=40))
def test_different_users_never_share_a_key(a: str, b: str) -> None:
    if a != b:
        assert routing_key(f"user:{a}:/queue/messages") != routing_key(f"user:{b}:/queue/messages")


def test_long_names_are_digested_within_the_amqp_key_limit() -> None:
    key = routing_key("user:" + "x" * 300 + "@example.com:/queue/messages")
    assert len(key.encode()) <= 255
    assert key != routing_key("user:" + "x" * 301 + "@example.com:/queue/messages")


def test_unresolved_user_destinations_are_refused() -> None:
    with pytest.raises(ValueError, match="user key first"):
        routing_key("/user/queue/messages")
    with pytest.raises(ValueError, match="not a user destination key"):
        routing_key("user:nobody")


def test_dedupe_drops_repeats_within_its_window_and_stays_bounded() -> None:
    dedupe = Dedupe(3)
    assert [dedupe.seen(i) for i in "abca"] == [False, False, False, True]
    assert dedupe.duplicates == 1
    assert not dedupe.seen("d")  # evicts the least recently seen: b
    assert len(dedupe) == 3
    assert not dedupe.seen("b")
    assert dedupe.seen("a")  # 'a' was refreshed by its repeat, so it stayed
    with pytest.raises(ValueError, match="at least 1"):
        Dedupe(0)


def _matches(binding: str, key: str) -> bool:
    """AMQP topic matching of a binding key (with `#` only at the end) against a key."""
    head, hashed, _ = binding.partition(".#")
    return key == head or (bool(hashed) and key.startswith(head + "."))


@given(st.text(min_size=1, max_size=40), st.text(min_size=1, max_size=40))
def test_a_users_one_binding_carries_each_of_its_queues_and_no_other_users(a: str, b: str) -> None:
    """One binding per user carries every queue of that user: after a restart, a returning
    client needed a bind per queue (ack, error, receipts, ...) besides its session topic."""
    binding = binding_key(binding_destination(f"user:{a}:/queue/ack"))
    assert binding == binding_key(binding_destination(f"user:{a}:/queue/receipts"))
    for path in ("/queue/ack", "/queue/messages", "/queue/a.b#c*"):
        assert _matches(binding, routing_key(f"user:{a}:{path}"))
        if a != b:
            assert not _matches(binding, routing_key(f"user:{b}:{path}"))
    assert not _matches(binding, routing_key(f"/topic/session.{SID}"))


def test_topics_and_other_destinations_are_bound_by_their_own_key() -> None:
    for destination in (f"/topic/session.{SID}", "/queue/jobs"):
        assert binding_destination(destination) == destination
        assert binding_key(destination) == routing_key(destination)
