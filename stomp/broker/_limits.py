"""Broker limits: keyword arguments with `DEFAULT_*` constants; configuration overrides them."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MAX_SUBSCRIPTIONS = 256
DEFAULT_MAX_UNACKED = 1_000
DEFAULT_MAX_QUEUE_BACKLOG = 10_000
DEFAULT_MAX_TRANSACTIONS = 16
DEFAULT_MAX_TRANSACTION_FRAMES = 1_000


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-session and per-destination bounds; crossing one is an ERROR frame, never a crash."""

    #: Subscriptions one session may hold.
    max_subscriptions: int = DEFAULT_MAX_SUBSCRIPTIONS
    #: Messages delivered to one session in a client ack mode and not yet acked. A /queue stops
    #: sending to a consumer at this bound; a /topic subscriber beyond it is a slow consumer.
    max_unacked: int = DEFAULT_MAX_UNACKED
    #: Messages a /queue keeps while no consumer can take them; a SEND beyond it is refused.
    max_queue_backlog: int = DEFAULT_MAX_QUEUE_BACKLOG
    #: Open transactions per session, and frames buffered by one transaction.
    max_transactions: int = DEFAULT_MAX_TRANSACTIONS
    max_transaction_frames: int = DEFAULT_MAX_TRANSACTION_FRAMES
