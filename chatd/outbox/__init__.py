"""The outbox publisher (DESIGN §6): committed outbox rows → an `OutboxSink`, in order, at
least once, with retries, backoff and a dead state.

`OutboxPublisher` is the supervisor part; `OutboxSink` the protocol its deliveries implement
(the local STOMP broker now, a RabbitMQ bridge later); `chatd.outbox.retry` holds the policy.
"""

from chatd.outbox.publisher import OutboxPublisher
from chatd.outbox.retry import backoff_delay, plan_failure
from chatd.outbox.sink import OutboxSink, SinkUnavailable

__all__ = [
    "OutboxPublisher", "OutboxSink", "SinkUnavailable", "backoff_delay", "plan_failure",
]
