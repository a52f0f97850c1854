"""The one home of chatd's destinations: spellings round-trip, and nothing else parses."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chatd.domain.destinations import (
    ALLOWED_SUBSCRIPTIONS,
    UserQueue,
    is_session_topic,
    session_topic,
    subscribed_user_queue,
    subscription_name,
    topic_session_id,
    user_queue,
)
from stomp.broker import user_key


@given(st.uuids())
def test_a_session_topic_names_its_session(session_id: uuid.UUID) -> None:
    topic = session_topic(session_id)
    assert topic == f"/topic/session.{session_id}"
    assert is_session_topic(topic)
    assert topic_session_id(topic) == session_id


@pytest.mark.parametrize(
    "destination",
    ["/topic/session.not-a-uuid", "/topic/other", "/user/queue/messages", "/topic/session."],
)
def test_anything_else_is_not_a_session_id(destination: str) -> None:
    with pytest.raises(ValueError, match="not a session topic"):
        topic_session_id(destination)


def test_user_queues_are_subscribed_under_user_and_keyed_per_user() -> None:
    assert [q.subscription for q in UserQueue] == [
        "/user/queue/messages",
        "/user/queue/ack",
        "/user/queue/error",
        "/user/queue/receipts",
        "/user/queue/pong",
        "/user/queue/keys",
        "/user/queue/presence",
    ]
    for queue in UserQueue:
        assert subscribed_user_queue(queue.subscription) is queue
        assert user_queue("ann@example.com", queue) == user_key("ann@example.com", queue.path)
    for other in ("/user/queue/other", "/queue/messages", "/user/bob@example.com/queue/ack"):
        assert subscribed_user_queue(other) is None
    assert ALLOWED_SUBSCRIPTIONS == (
        "/topic/session.{id} and /user/queue/{messages,ack,error,receipts,pong,keys,presence}"
    )


def test_subscription_names_leave_the_user_out() -> None:
    # what trace spans name a delivery by (docs/security.md, What traces contain)
    sid = uuid.uuid4()
    for queue in UserQueue:
        key = user_queue("ann:x@example.com", queue)
        assert subscription_name(key) == queue.subscription
        assert "ann" not in subscription_name(key)
    assert subscription_name(session_topic(sid)) == session_topic(sid)
