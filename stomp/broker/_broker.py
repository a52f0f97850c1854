"""The broker core: pure, synchronous, no clock, no I/O.

`Broker` routes validated events (from `ServerConnection`) between sessions and answers with
actions (`Write`, `Close`, `DestinationActive`, `PrincipalActive`) for a runtime to carry
out. Destinations under `/queue/` have competing consumers served round-robin, with a bounded
backlog while nobody can take a message; every other destination fans out like a topic.
`/user/...` destinations are rewritten to `user:{principal}:/...` keys, so a user's every
session shares them and no client can name another user's.

Errors found here (unknown ack id, duplicate subscription, a crossed limit, ...) become an ERROR
frame and a Close for that session, after its state is released, so no message is ever
delivered to a session that has been told it is closed.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from .._codec import encode_frame
from .._errors import LocalProtocolError, RemoteProtocolError
from .._events import (
    Abort,
    Ack,
    AckMode,
    Begin,
    ClientEvent,
    Commit,
    Connect,
    Disconnect,
    Nack,
    Send,
    Subscribe,
    Unsubscribe,
    Violation,
)
from .._frames import (
    ACK,
    CONTENT_LENGTH,
    CONTENT_TYPE,
    DESTINATION,
    HEART_BEAT,
    MESSAGE,
    MESSAGE_ID,
    RECEIPT,
    RECEIPT_ID,
    SERVER,
    SESSION,
    SUBSCRIPTION,
    TRANSACTION,
    VERSION,
    Command,
    Frame,
    Headers,
    escape,
)
from ._actions import Action, Close, DestinationActive, PrincipalActive, SessionId, Write
from ._limits import Limits

USER_PREFIX = "/user/"
QUEUE_PREFIX = "/queue/"
#: What every `user_key` starts with.
USER_KEY_PREFIX = "user:"
DEFAULT_SERVER_NAME = "stomp-trio/0.1"
#: Headers the broker sets itself on a MESSAGE; a SEND's copies of them are not passed on.
_OWN_HEADERS = frozenset(
    {DESTINATION, TRANSACTION, RECEIPT, CONTENT_LENGTH, MESSAGE_ID, SUBSCRIPTION, ACK}
)


def user_key(principal: str, path: str) -> str:
    """Routing key of `path` (e.g. `/queue/messages`) for one user: `user:{principal}:{path}`."""
    return f"{USER_KEY_PREFIX}{principal}:{path}"


@dataclass(slots=True)
class _Message:
    """A published message; its tail (headers after the per-delivery ones, and the body) is
    encoded once and shared by every delivery."""

    key: str
    headers: Headers
    body: bytes
    #: Publish order, so messages handed back to a queue keep the order they were sent in.
    order: int
    _tails: dict[bool, bytes] = field(default_factory=dict)

    def tail(self, escaping: bool) -> bytes:
        cached = self._tails.get(escaping)
        if cached is None:
            parts = []
            for name, value in self.headers:
                if escaping:
                    name, value = escape(name), escape(value)
                parts.append(f"{name}:{value}\n")
            parts.append(f"{CONTENT_LENGTH}:{len(self.body)}\n\n")
            cached = "".join(parts).encode() + self.body + b"\0"
            self._tails[escaping] = cached
        return cached


@dataclass(slots=True, eq=False)
class _Session:
    id: SessionId
    principal: str | None
    version: str
    subscriptions: dict[str, _Subscription] = field(default_factory=dict)
    #: Deliveries awaiting ACK/NACK, in delivery order (cumulative `client` acks rely on it).
    unacked: dict[str, _Unacked] = field(default_factory=dict)
    transactions: dict[str, list[Send | Ack | Nack]] = field(default_factory=dict)

    @property
    def escaping(self) -> bool:
        return self.version != "1.0"


@dataclass(slots=True, eq=False)
class _Subscription:
    session: _Session
    id: str
    destination: str
    key: str
    ack: AckMode
    head: bytes  # "MESSAGE\nsubscription:..\ndestination:..\n", encoded once


@dataclass(slots=True)
class _Unacked:
    subscription: _Subscription
    message: _Message


@dataclass(slots=True, eq=False)
class _Queue:
    consumers: list[_Subscription] = field(default_factory=list)
    cursor: int = 0
    backlog: deque[_Message] = field(default_factory=deque)


class Broker:
    """Routes STOMP events between sessions; every method returns the actions to carry out."""

    def __init__(
        self,
        *,
        limits: Limits | None = None,
        server_name: str = DEFAULT_SERVER_NAME,
        ids: Iterator[int] | None = None,
    ) -> None:
        self.limits = limits or Limits()
        self.server_name = server_name
        self._ids = ids if ids is not None else itertools.count(1)
        self._order = itertools.count()
        self._sessions: dict[SessionId, _Session] = {}
        self._topics: dict[str, dict[_Subscription, None]] = {}
        self._queues: dict[str, _Queue] = {}
        #: Connected sessions per principal: the first and the last make `PrincipalActive`.
        self._principals: dict[str, int] = {}

    # -- queries -----------------------------------------------------------------------------

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    def subscriber_count(self, key: str) -> int:
        """Subscriptions currently routed from `key` (a destination or a user key)."""
        queue = self._queues.get(key)
        return len(queue.consumers) if queue else len(self._topics.get(key, ()))

    def queue_depth(self, key: str) -> int:
        """Messages waiting in a /queue backlog."""
        queue = self._queues.get(key)
        return len(queue.backlog) if queue else 0

    def principal(self, session: SessionId) -> str | None:
        state = self._sessions.get(session)
        return state.principal if state else None

    def principal_sessions(self, principal: str) -> int:
        """Connected sessions acting for `principal`."""
        return self._principals.get(principal, 0)

    # -- session lifecycle -------------------------------------------------------------------

    def connect(
        self, session: SessionId, event: Connect, principal: str | None = None
    ) -> list[Action]:
        """Register an authenticated session and answer CONNECTED."""
        if session in self._sessions:
            raise LocalProtocolError(f"session {session!r} is already connected")
        self._sessions[session] = _Session(session, principal, event.version)
        headers = [(VERSION, event.version), (SERVER, self.server_name), (SESSION, session)]
        if event.version != "1.0":
            headers.append((HEART_BEAT, f"{event.heartbeat[0]},{event.heartbeat[1]}"))
        out: list[Action] = []
        if principal is not None:
            headers.append(("user-name", principal))
            count = self._principals[principal] = self._principals.get(principal, 0) + 1
            if count == 1:
                out.append(PrincipalActive(principal, True))
        frame = Frame(Command.CONNECTED, tuple(headers))
        out.insert(0, Write(session, encode_frame(frame)))
        return out

    def handle(self, session: SessionId, event: ClientEvent | Violation) -> list[Action]:
        """Apply one event of a connected session (or a `Violation` of any session)."""
        if isinstance(event, Violation):
            return self.refuse(session, event.message, event.detail, event.receipt, event.headers)
        state = self._sessions.get(session)
        if state is None:
            raise LocalProtocolError(f"session {session!r} is not connected")
        out: list[Action] = []
        try:
            if isinstance(event, Disconnect):
                out += self.disconnect(session)
                if event.receipt is not None:
                    out.append(Write(session, _receipt(event.receipt, state.escaping)))
                out.append(Close(session, "client disconnected"))
                return out
            self._apply(state, event, out)
        except RemoteProtocolError as exc:
            return out + self.refuse(session, exc.message, exc.detail, event.receipt)
        if event.receipt is not None:
            out.append(Write(session, _receipt(event.receipt, state.escaping)))
        return out

    def receipt(self, session: SessionId, receipt_id: str) -> list[Action]:
        """A RECEIPT the application answers later (e.g. once a message is stored)."""
        state = self._sessions.get(session)
        if state is None:
            return []
        return [Write(session, _receipt(receipt_id, state.escaping))]

    def refuse(
        self,
        session: SessionId,
        message: str,
        detail: str = "",
        receipt: str | None = None,
        headers: Headers = (),
    ) -> list[Action]:
        """Release the session, answer ERROR (`message` header, `detail` body), then Close."""
        state = self._sessions.get(session)
        escaping = state.escaping if state else True
        out = self.disconnect(session)
        error_headers: list[tuple[str, str]] = [(MESSAGE, message), *headers]
        if receipt is not None:
            error_headers.append((RECEIPT_ID, receipt))
        body = detail.encode()
        error_headers += [(CONTENT_TYPE, "text/plain"), (CONTENT_LENGTH, str(len(body)))]
        frame = Frame(Command.ERROR, tuple(error_headers), body)
        out.append(Write(session, encode_frame(frame, escaping=escaping)))
        out.append(Close(session, message))
        return out

    def disconnect(self, session: SessionId) -> list[Action]:
        """Forget a session: drop its subscriptions, requeue its unacked /queue messages and
        abort its transactions. Safe to call more than once."""
        state = self._sessions.pop(session, None)
        out: list[Action] = []
        if state is None:
            return out
        state.transactions.clear()
        for subscription in list(state.subscriptions.values()):
            self._unsubscribe(state, subscription, out)
        if state.principal is not None:
            left = self._principals[state.principal] - 1
            if left:
                self._principals[state.principal] = left
            else:
                del self._principals[state.principal]
                out.append(PrincipalActive(state.principal, False))
        return out

    # -- publishing from application code ------------------------------------------------------

    def publish(self, key: str, body: bytes, headers: Headers = ()) -> list[Action]:
        """Deliver `body` to the subscribers of `key` (`/topic/..`, `/queue/..` or a
        `user_key(...)`), as if a client had sent it. Raises RemoteProtocolError when a /queue
        backlog is full."""
        out: list[Action] = []
        self._route(self._message(key, headers, body), out)
        return out

    def direct(
        self,
        session: SessionId,
        subscription: str,
        destination: str,
        body: bytes,
        headers: Headers = (),
    ) -> list[Action]:
        """One MESSAGE for one session, outside routing: `subscription` and `destination` go
        into its headers as given, and it is not tracked for ACK (its `ack` header is absent).

        For an application that writes a subscription's first messages itself (a replay of
        stored history, from the `authorize_subscribe` hook, before the subscription exists).
        Returns no action when the session is not connected.
        """
        state = self._sessions.get(session)
        if state is None:
            return []
        if state.escaping:
            subscription, destination = escape(subscription), escape(destination)
        head = (
            f"MESSAGE\n{SUBSCRIPTION}:{subscription}\n{DESTINATION}:{destination}\n"
            f"{MESSAGE_ID}:{next(self._ids)}\n"
        ).encode()
        message = self._message(destination, headers, body)
        return [Write(session, head, message.tail(state.escaping))]

    # -- event handling ------------------------------------------------------------------------

    def _apply(self, state: _Session, event: ClientEvent, out: list[Action]) -> None:
        if isinstance(event, Send | Ack | Nack) and event.transaction is not None:
            self._buffer(state, event)
        elif isinstance(event, Send):
            key = self._send_key(state, event.destination)
            self._route(self._message(key, event.frame.headers, event.frame.body), out)
        elif isinstance(event, Subscribe):
            self._subscribe(state, event, out)
        elif isinstance(event, Unsubscribe):
            subscription = state.subscriptions.get(event.id)
            if subscription is None:
                raise RemoteProtocolError("unknown subscription", f"no subscription {event.id!r}")
            self._unsubscribe(state, subscription, out)
        elif isinstance(event, Ack | Nack):
            self._settle(state, event.id, isinstance(event, Nack), out)
        elif isinstance(event, Begin):
            if event.transaction in state.transactions:
                raise RemoteProtocolError("duplicate transaction", repr(event.transaction))
            if len(state.transactions) >= self.limits.max_transactions:
                raise RemoteProtocolError(
                    "too many transactions", f"limit {self.limits.max_transactions}"
                )
            state.transactions[event.transaction] = []
        elif isinstance(event, Commit):
            for buffered in self._end_transaction(state, event.transaction):
                self._apply(state, _outside_transaction(buffered), out)
        elif isinstance(event, Abort):
            self._end_transaction(state, event.transaction)
        else:  # Connect: the connection's state machine never lets a second one through
            raise LocalProtocolError(f"unexpected event {type(event).__name__}")

    def _buffer(self, state: _Session, event: Send | Ack | Nack) -> None:
        assert event.transaction is not None
        frames = state.transactions.get(event.transaction)
        if frames is None:
            raise RemoteProtocolError("unknown transaction", repr(event.transaction))
        if len(frames) >= self.limits.max_transaction_frames:
            raise RemoteProtocolError(
                "transaction too large", f"limit {self.limits.max_transaction_frames} frames"
            )
        frames.append(event)

    def _end_transaction(self, state: _Session, name: str) -> list[Send | Ack | Nack]:
        frames = state.transactions.pop(name, None)
        if frames is None:
            raise RemoteProtocolError("unknown transaction", repr(name))
        return frames

    def _send_key(self, state: _Session, destination: str) -> str:
        if destination.startswith(USER_PREFIX):
            name, _, path = destination[len(USER_PREFIX) :].partition("/")
            if not name or not path:
                raise RemoteProtocolError(
                    "invalid destination", f"{destination!r}: expected /user/{{name}}/..."
                )
            return user_key(name, "/" + path)
        return destination

    def _subscribe(self, state: _Session, event: Subscribe, out: list[Action]) -> None:
        if event.id in state.subscriptions:
            raise RemoteProtocolError("duplicate subscription id", repr(event.id))
        if len(state.subscriptions) >= self.limits.max_subscriptions:
            raise RemoteProtocolError(
                "too many subscriptions", f"limit {self.limits.max_subscriptions}"
            )
        key = event.destination
        if key.startswith(USER_PREFIX):
            if state.principal is None:
                raise RemoteProtocolError(
                    "user destinations need an authenticated session", event.destination
                )
            key = user_key(state.principal, event.destination[len(USER_PREFIX) - 1 :])
        sub_id, destination = event.id, event.destination
        if state.escaping:
            sub_id, destination = escape(sub_id), escape(destination)
        head = f"MESSAGE\n{SUBSCRIPTION}:{sub_id}\n{DESTINATION}:{destination}\n".encode()
        subscription = _Subscription(state, event.id, event.destination, key, event.ack, head)
        state.subscriptions[event.id] = subscription
        if key.startswith(QUEUE_PREFIX):
            queue = self._queues.setdefault(key, _Queue())
            queue.consumers.append(subscription)
            first = len(queue.consumers) == 1
            self._drain(queue, out)
        else:
            topic = self._topics.setdefault(key, {})
            topic[subscription] = None
            first = len(topic) == 1
        if first:
            out.append(DestinationActive(key, True))

    def _unsubscribe(self, state: _Session, subscription: _Subscription, out: list[Action]) -> None:
        del state.subscriptions[subscription.id]
        returned = [
            (ack_id, entry)
            for ack_id, entry in state.unacked.items()
            if entry.subscription is subscription
        ]
        for ack_id, _ in returned:
            del state.unacked[ack_id]
        key = subscription.key
        queue = self._queues.get(key)
        if queue is not None:
            index = queue.consumers.index(subscription)
            del queue.consumers[index]
            if index < queue.cursor:
                queue.cursor -= 1
            _requeue(queue, [entry.message for _, entry in returned])
            last = not queue.consumers
            self._drain(queue, out)
            if last and not queue.backlog:
                del self._queues[key]
        else:
            topic = self._topics[key]
            del topic[subscription]
            last = not topic
            if last:
                del self._topics[key]
        if last:
            out.append(DestinationActive(key, False))

    def _settle(self, state: _Session, ack_id: str, nack: bool, out: list[Action]) -> None:
        entry = state.unacked.get(ack_id)
        if entry is None:
            raise RemoteProtocolError("unknown ack id", f"no unacknowledged message {ack_id!r}")
        subscription = entry.subscription
        if subscription.ack is AckMode.CLIENT:  # cumulative: everything up to this one
            settled = []
            for key, candidate in state.unacked.items():
                if candidate.subscription is subscription:
                    settled.append(key)
                if key == ack_id:
                    break
        else:
            settled = [ack_id]
        messages = [state.unacked.pop(key).message for key in settled]
        queue = self._queues.get(subscription.key)
        if queue is not None:
            if nack:
                _requeue(queue, messages)
            self._drain(queue, out)

    # -- routing -------------------------------------------------------------------------------

    def _message(self, key: str, headers: Iterable[tuple[str, str]], body: bytes) -> _Message:
        return _Message(key, _passed_on(headers), body, next(self._order))

    def _route(self, message: _Message, out: list[Action]) -> None:
        queue = self._queues.get(message.key)
        if message.key.startswith(QUEUE_PREFIX):
            if queue is None:
                queue = self._queues[message.key] = _Queue()
            if len(queue.backlog) >= self.limits.max_queue_backlog:
                raise RemoteProtocolError(
                    "queue full",
                    f"{message.key!r} holds {self.limits.max_queue_backlog} undelivered messages",
                )
            queue.backlog.append(message)
            self._drain(queue, out)
            return
        topic = self._topics.get(message.key)
        if not topic:
            return
        slow: list[_Session] = []
        for subscription in topic:
            if self._deliver(subscription, message, out) is False:
                slow.append(subscription.session)
        for session in dict.fromkeys(slow):
            out += self.refuse(
                session.id,
                "slow consumer",
                f"more than {self.limits.max_unacked} unacknowledged messages",
            )

    def _drain(self, queue: _Queue, out: list[Action]) -> None:
        while queue.backlog:
            subscription = self._next_consumer(queue)
            if subscription is None:
                return
            self._deliver(subscription, queue.backlog.popleft(), out)

    def _next_consumer(self, queue: _Queue) -> _Subscription | None:
        count = len(queue.consumers)
        for step in range(count):
            index = (queue.cursor + step) % count
            subscription = queue.consumers[index]
            if self._has_room(subscription):
                queue.cursor = (index + 1) % count
                return subscription
        return None

    def _has_room(self, subscription: _Subscription) -> bool:
        return (
            subscription.ack is AckMode.AUTO
            or len(subscription.session.unacked) < self.limits.max_unacked
        )

    def _deliver(self, subscription: _Subscription, message: _Message, out: list[Action]) -> bool:
        """Queue one MESSAGE; False (nothing sent) when the session has no room for unacked."""
        session = subscription.session
        if not self._has_room(subscription):
            return False
        message_id = str(next(self._ids))
        head = subscription.head + f"{MESSAGE_ID}:{message_id}\n".encode()
        if subscription.ack is not AckMode.AUTO:
            if session.version == "1.2":
                head += f"{ACK}:{message_id}\n".encode()
            session.unacked[message_id] = _Unacked(subscription, message)
        out.append(Write(session.id, head, message.tail(session.escaping)))
        return True


def _requeue(queue: _Queue, messages: list[_Message]) -> None:
    queue.backlog.extendleft(sorted(messages, key=lambda m: m.order, reverse=True))


def _passed_on(headers: Iterable[tuple[str, str]]) -> Headers:
    seen: set[str] = set()
    kept = []
    for name, value in headers:
        if name not in _OWN_HEADERS and name not in seen:
            seen.add(name)
            kept.append((name, value))
    return tuple(kept)


def _outside_transaction(event: Send | Ack | Nack) -> Send | Ack | Nack:
    if isinstance(event, Send):
        return Send(event.frame, event.destination, None)
    return type(event)(event.frame, event.id, None)


def _receipt(receipt_id: str, escaping: bool) -> bytes:
    return encode_frame(Frame(Command.RECEIPT, ((RECEIPT_ID, receipt_id),)), escaping=escaping)
