"""The outbox publisher: committed outbox rows → an `OutboxSink`, in order, at
least once, with retries, backoff and a dead state.

`OutboxPublisher` is the supervisor part; `OutboxSink` the protocol its deliveries implement
(the local STOMP broker, or the RabbitMQ bridge); `chatd.outbox.retry` holds the policy;
`OutboxPurger` deletes sent rows once `[outbox] retention_hours` have passed.
"""

from chatd.outbox.publisher import OutboxPublisher
from chatd.outbox.purger import OutboxPurger
from chatd.outbox.retry import backoff_delay, plan_failure
from chatd.outbox.sink import OutboxSink, SinkUnavailable

__all__ = [
    "OutboxPublisher",
    "OutboxPurger",
    "OutboxSink",
    "SinkUnavailable",
    "backoff_delay",
    "plan_failure",
]
