"""The one thing the outbox publisher needs from whatever delivers its rows.

The publisher (and the send committer, which delivers right after its commit on one instance)
is written against this protocol, not against a concrete delivery, because two very different
sinks sit behind it: `chatd.realtime.delivery.LocalDelivery` (the embedded broker's subscribers
in this process) and `chatd.bridge.RabbitBridge`, whose `publish` returns only once RabbitMQ
confirmed every message. Keeping the contract this small is what lets either be swapped in
without the publisher knowing.

The contract, which the publisher's correctness rests on:

* `publish` returning normally means the sink *accepted* every row it was given: the publisher
  then marks them processed and will never hand them out again.
* `publish` raising any `Exception` means "not accepted". The publisher cannot tell which rows of
  the call got through, so it retries them (one row per call, to find the culprit): delivery is
  at least once, and a sink that can partially succeed should make re-delivery harmless (the
  message JSON carries ``messageId`` and ``seq``, so clients drop duplicates).
* `publish` raising `SinkUnavailable` means "not accepted, and not the rows' fault" (e.g. the
  RabbitMQ connection is down): the publisher gives every row back untried and uncharged, so
  rows never go dead because a broker restarted.
* Rows arrive in id order, which is seq order within each session; a sink must keep that order
  per destination. Rows of different sessions may share one call.
* `publish` may be cancelled (shutdown, or the publisher's time budget of half a lease); the
  rows then count as not accepted.

This module is deliberately tiny (it is a seam between the outbox and its sinks, not a
feature), so it stays below the usual module size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from chatd.domain.models import OutboxRow


class SinkUnavailable(Exception):
    """The sink cannot take rows right now; they are given back without a retry charged."""


class OutboxSink(Protocol):
    """Where the outbox publisher hands claimed rows; see the module docstring for the rules."""

    async def publish(self, rows: Sequence[OutboxRow]) -> None:
        """Deliver `rows` (id order, one or more sessions); return only once all are accepted.

        Raises any `Exception` when they were not (all of them are then retried).
        """
        ...
