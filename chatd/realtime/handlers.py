"""The `/app/...` destinations: what a client's SEND asks chatd to do
(docs/architecture.md, Wire contracts).

They run in the session's reader, inside the `on_app_send` hook, so the session's next frame
waits for them: each is bounded by `timeout`. Answers go to the caller's own user queues —
`/user/queue/ack` (the stored message, with its `clientMessageId`), `/user/queue/error`
(`{clientMessageId, status, errorMsg}`, mapped by `chatd.domain.errors.view`, the table REST
uses too) and `/user/queue/pong` — so every connection of the caller sees them and matches
them by `clientMessageId`. A client mistake is an error message, never a closed session.
With several instances, `relay` (the RabbitMQ bridge) carries these unstored publishes —
answers and typing notices — to the caller's connections on other instances too.

A `receipt` header is answered once the work is done: for `chat.send`, after the message is
stored and its ack published (or after its error, so a receipt never overtakes the answer).

With tracing on, each `/app` frame is a server span (``SEND /app/...``), continuing the trace
of a ``traceparent`` header the client sent; it covers the frame's handling up to queueing a
send, whose commit and deliveries follow as its children in the committer's task.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

import trio

from chatd.domain.destinations import UserQueue, session_topic, user_queue
from chatd.domain.errors import BadRequest, ChatError, Unavailable, view
from chatd.domain.models import EVENT_MESSAGE, Message, batch_answers_json, compact_json
from chatd.observability.tracing import TRACEPARENT, Tracer
from chatd.realtime.delivery import event_headers
from chatd.services import ChatService
from stomp import Send
from stomp.broker import SessionId
from stomp.trio import BrokerRuntime

log = logging.getLogger(__name__)

APP_PREFIX: Final = "/app/"
EVENT_TYPING: Final = "typing"
#: `event` header values of the direct answers (they are replies, not session events).
EVENT_ERROR: Final = "error"
EVENT_PONG: Final = "pong"
#: `event` of a batch send's answer on `/user/queue/ack`: a JSON array, not one message.
EVENT_BATCH: Final = "batch"
#: Seconds one `/app` frame may hold up its session's reader.
DEFAULT_HANDLER_TIMEOUT: Final = 10.0

#: (session, caller, body, receipt id): what one `/app` destination does with a SEND; True
#: when it answers later (then it owns the receipt), False when it is done.
Handler = Callable[[SessionId, str, dict[str, Any], str | None], Awaitable[bool]]
#: (destination key, event, body): forwards an ephemeral publish to other instances.
Relay = Callable[[str, str, bytes], None]


class AppHandlers:
    """The `/app` destinations of one runtime; `handle` is what `on_app_send` calls."""

    def __init__(
        self,
        services: ChatService,
        runtime: BrokerRuntime,
        *,
        timeout: float = DEFAULT_HANDLER_TIMEOUT,
        relay: Relay | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self.services = services
        self.runtime = runtime
        self.timeout = timeout
        self.relay = relay
        #: When tracing is on (see the module docstring).
        self.tracer = tracer
        self.routes: dict[str, Handler] = {
            "/app/chat.send": self.chat_send,
            "/app/chat.send-batch": self.chat_send_batch,
            "/app/chat.delivered": self.chat_delivered,
            "/app/chat.seen": self.chat_seen,
            "/app/chat.typing": self.chat_typing,
            "/app/ping": self.ping,
        }

    def knows(self, destination: str) -> bool:
        """True for a destination one of the handlers serves."""
        return destination in self.routes

    async def handle(self, session: SessionId, caller: str, event: Send) -> None:
        """Run the handler of `event.destination`, answer errors on `/user/queue/error`, then
        the frame's receipt. Never raises for anything the client sent."""
        if self.tracer is None:
            await self._handle(session, caller, event)
            return
        span = self.tracer.start(
            f"SEND {event.destination}",
            event.frame.get(TRACEPARENT),
            kind="server",
            attributes={
                "messaging.system": "stomp",
                "messaging.operation.type": "process",
                "messaging.destination.name": event.destination,
            },
        )
        try:
            with self.tracer.activate(span):
                await self._handle(session, caller, event)
        finally:
            span.end()

    async def _handle(self, session: SessionId, caller: str, event: Send) -> None:
        body: dict[str, Any] = {}
        later = False
        try:
            body = parse_body(event.frame.body)
            with trio.move_on_after(self.timeout) as scope:
                later = await self.routes[event.destination](session, caller, body, event.receipt)
            if scope.cancelled_caught:
                raise Unavailable(f"{event.destination} timed out")
        except ChatError as exc:
            self.error(caller, body.get("clientMessageId"), exc)
        except Exception as exc:  # a bug of ours: the caller gets a 500 body, we a traceback
            log.exception("%s from %s failed", event.destination, caller)
            self.error(caller, body.get("clientMessageId"), exc)
        if event.receipt is not None and not later:
            self.runtime.receipt(session, event.receipt)

    # -- handlers ------------------------------------------------------------------------------

    async def chat_send(
        self, session: SessionId, caller: str, body: dict[str, Any], receipt: str | None
    ) -> bool:
        """Store a message like REST does; the message JSON goes to `/user/queue/ack`, then
        the receipt, once its batch committed. The frame's reader goes on meanwhile (so a
        client that pipelines sends gets them stored together), and the send's wait is
        counted from when its frame was read: a flood is refused (busy, `retryAfter`) rather
        than stored ever later. Answers keep the order of the sends."""
        cmid = body.get("clientMessageId")

        def stored(result: Message | ChatError, created: bool) -> None:
            if isinstance(result, ChatError):
                self.error(caller, cmid, result)
            else:
                self.reply(caller, UserQueue.ACK, result.to_json(), EVENT_MESSAGE)
            if receipt is not None:
                self.runtime.receipt(session, receipt)

        await self.services.submit(
            caller,
            body.get("sessionId"),
            body.get("content"),
            cmid,
            stored,
            path="stomp",
            received_at=self.runtime.received_at(session),
        )
        return True

    async def chat_send_batch(
        self, session: SessionId, caller: str, body: dict[str, Any], receipt: str | None
    ) -> bool:
        """Store a batch like ``POST /api/chat/messages`` (`ChatService.send_batch`, all or
        nothing); its answers, one JSON array of ``{status, message}``, go to
        `/user/queue/ack` (event ``batch``) or its one error to `/user/queue/error`, then the
        receipt, once the batch committed. The reader goes on meanwhile, as for `chat_send`.
        Each message is still published as its own MESSAGE frame, in order."""

        def stored(result: list[tuple[Message, bool]] | ChatError) -> None:
            if isinstance(result, ChatError):
                self.error(caller, None, result, batch=body.get("messages"))
            else:
                self.reply(caller, UserQueue.ACK, batch_answers_json(result), EVENT_BATCH)
            if receipt is not None:
                self.runtime.receipt(session, receipt)

        try:
            await self.services.submit_batch(
                caller,
                body.get("sessionId"),
                body.get("messages"),
                stored,
                path="stomp",
                received_at=self.runtime.received_at(session),
            )
        except ChatError as exc:
            stored(exc)
        return True

    async def chat_delivered(
        self, session: SessionId, caller: str, body: dict[str, Any], receipt: str | None
    ) -> bool:
        """Mark others' messages delivered; the store writes the receipt's outbox rows."""
        await self.services.mark(
            caller, body.get("sessionId"), "delivered", up_to_seq=body.get("upToSeq")
        )
        return False

    async def chat_seen(
        self, session: SessionId, caller: str, body: dict[str, Any], receipt: str | None
    ) -> bool:
        """Mark others' messages seen (and delivered); receipts go out through the outbox."""
        await self.services.mark(
            caller, body.get("sessionId"), "seen", up_to_seq=body.get("upToSeq")
        )
        return False

    async def chat_typing(
        self, session: SessionId, caller: str, body: dict[str, Any], receipt: str | None
    ) -> bool:
        """Tell the session topic the caller is typing; ephemeral, never stored."""
        chat = await self.services.require_participant(caller, body.get("sessionId"))
        payload = {"sessionId": str(chat.id), "email": caller}
        self.publish(session_topic(chat.id), compact_json(payload).encode(), EVENT_TYPING)
        return False

    async def ping(
        self, session: SessionId, caller: str, body: dict[str, Any], receipt: str | None
    ) -> bool:
        """Echo the body (a client's correlation data) on `/user/queue/pong`."""
        self.reply(caller, UserQueue.PONG, body, EVENT_PONG)
        return False

    # -- answers -------------------------------------------------------------------------------

    def reply(self, caller: str, queue: UserQueue, payload: Any, event: str) -> None:
        """Publish JSON to every connection of `caller` subscribed to `queue`."""
        self.publish(user_queue(caller, queue), compact_json(payload).encode(), event)

    def publish(self, key: str, body: bytes, event: str) -> None:
        """Publish an unstored event here, and through `relay` to other instances."""
        self.runtime.publish(key, body, event_headers(event))
        if self.relay is not None:
            self.relay(key, event, body)

    def error(
        self, caller: str, client_message_id: object, exc: BaseException, *, batch: object = None
    ) -> None:
        """`{clientMessageId, status, errorMsg}` (plus `retryAfter` when rate limited or busy);
        for a batch send, `clientMessageId` is null and `clientMessageIds` lists the batch's
        (those that are strings), so the client knows which batch was refused."""
        shown = view(exc)
        payload: dict[str, Any] = {
            "clientMessageId": client_message_id if isinstance(client_message_id, str) else None,
            "status": shown.code,
            "errorMsg": shown.message,
        }
        if isinstance(batch, list):
            payload["clientMessageIds"] = [
                item.get("clientMessageId")
                for item in batch
                if isinstance(item, dict) and isinstance(item.get("clientMessageId"), str)
            ]
        if shown.retry_after is not None:
            payload["retryAfter"] = shown.retry_after
        self.reply(caller, UserQueue.ERROR, payload, EVENT_ERROR)


def parse_body(raw: bytes) -> dict[str, Any]:
    """A SEND body as a JSON object; `BadRequest` otherwise (an empty body is `{}`)."""
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise BadRequest("malformed JSON body") from None
    if not isinstance(data, dict):
        raise BadRequest("JSON body must be an object")
    return data
