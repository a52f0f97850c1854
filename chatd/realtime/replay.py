"""Gap recovery: SUBSCRIBE to `/topic/session.{id}` with `x-since-seq: N` replays the stored
messages after N, then continues live, with no gap and no duplicate.

How (the same single-instance and behind RabbitMQ): `LocalDelivery` knows L, the highest seq
it published to the topic. We fetch (N, L] from the store; if L moved while we awaited, the
messages in between went to the topic without us, so we fetch those too, until a fetch ends
at the current L. Then — with no await in between — we write the fetched frames to the
session and return; the runtime activates the subscription before any other task runs
(`stomp.trio.Hooks`), so the first live message it sees is L + 1.

When the process has not published to the topic yet, L is seeded from the session's stored
last seq, read fresh (the services cache sessions, and a cached `last_seq` is stale): those
messages are committed, so the store has them; rows of them still pending in the outbox are
then not published to the topic again (`LocalDelivery`).
"""

from __future__ import annotations

from typing import Final

from chatd.domain.errors import ChatError, view
from chatd.domain.models import EVENT_MESSAGE, ChatSession, Message, compact_json
from chatd.realtime.delivery import LocalDelivery, event_headers
from chatd.services import ChatService
from chatd.services.inputs import parse_seq
from stomp import AckMode, Subscribe
from stomp.broker import SessionId
from stomp.trio import BrokerRuntime, Refused

SINCE_SEQ: Final = "x-since-seq"
#: Messages one SUBSCRIBE may replay; a client further behind pages through REST history.
DEFAULT_MAX_REPLAY: Final = 1000
#: Fetches before giving up on a topic that never holds still (each one is a DB round trip).
MAX_ROUNDS: Final = 20


def since_seq(event: Subscribe) -> int | None:
    """The `x-since-seq` header as a seq, None when absent; Refused when malformed."""
    raw = event.frame.get(SINCE_SEQ)
    if raw is None:
        return None
    try:
        value = parse_seq(raw, SINCE_SEQ)
    except ChatError as exc:
        raise Refused(f"invalid {SINCE_SEQ} for {event.destination}", exc.message) from None
    return value


async def replay(
    runtime: BrokerRuntime,
    delivery: LocalDelivery,
    services: ChatService,
    *,
    session: SessionId,
    caller: str,
    chat: ChatSession,
    after: int,
    event: Subscribe,
    max_replay: int = DEFAULT_MAX_REPLAY,
) -> int:
    """Write the stored messages of `chat` with seq > `after` to `session` as MESSAGE frames of
    the subscription `event` asks for; return how many. Call it last in the hook: it returns
    with no checkpoint after its final check.

    Raises Refused when more than `max_replay` messages are missing (the client must page
    through REST history first), when the subscription wants client acks (replayed frames are
    not ack-tracked), or when the store fails.
    """
    if event.ack is not AckMode.AUTO:
        raise Refused(
            f"{SINCE_SEQ} needs ack:auto on {event.destination}",
            "replayed messages cannot be acknowledged; subscribe with ack:auto",
        )
    target = delivery.last_seq(chat.id)
    if target is None:
        target = delivery.seed(chat.id, await _stored_last_seq(services, chat, event))
    fetched: list[Message] = []
    upto = after
    for _ in range(MAX_ROUNDS):
        if target - after > max_replay:
            raise Refused(
                f"too many messages to replay on {event.destination}",
                f"{target - after} messages after seq {after} (at most {max_replay}); "
                "page through GET /api/chat/history, then subscribe with a later x-since-seq",
            )
        if target > upto:
            try:
                fetched += await services.replay(caller, chat.id, upto, limit=target - upto)
            except ChatError as exc:
                raise Refused(f"cannot replay {event.destination}", view(exc).message) from None
            upto = target
        # No checkpoint from this read to the hook's return: see the module docstring.
        current = delivery.last_seq(chat.id)
        if current is None:  # the mark was evicted meanwhile: fetched is still exact
            current = delivery.seed(chat.id, target)
        if current <= upto:
            break
        target = current
    else:
        raise Refused(f"cannot replay {event.destination}", "the session is too busy; retry")
    for message in fetched:
        if after < message.seq <= upto:
            body = compact_json(message.to_json())
            runtime.deliver(
                session,
                event.id,
                event.destination,
                body.encode(),
                event_headers(EVENT_MESSAGE, ("x-seq", str(message.seq))),
            )
    return len(fetched)


async def _stored_last_seq(services: ChatService, chat: ChatSession, event: Subscribe) -> int:
    try:
        fresh = await services.store.get_session(chat.id)
    except ChatError as exc:
        raise Refused(f"cannot replay {event.destination}", view(exc).message) from None
    return chat.last_seq if fresh is None else max(fresh.last_seq, chat.last_seq)
