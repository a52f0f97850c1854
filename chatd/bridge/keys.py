"""Routing keys and duplicate detection for the RabbitMQ bridge.

Why escaping: AMQP topic routing keys are dot-separated words, and in a *binding* key `*` and
`#` are wildcards. Destinations contain user names and session ids that a client chose (an
e-mail may hold dots, `#`, `*`), so a destination copied into a key as is could bind more
than it asked for (`user:#:/queue/messages` would receive every user's messages) or collide
with another one. Each variable part is therefore percent-encoded into a single word with no
`.`, `*` or `#` in it; the words are joined with dots. A client never chooses a key: keys are
only ever derived here, from destinations the broker hooks already authorized.

Dedupe: a row is published at least once (a lost connection republishes the unconfirmed rows,
RabbitMQ redelivers what it had not seen acknowledged), so consumers drop a message whose id
they have seen recently. The window is a bounded LRU: memory stays flat, and a duplicate
arrives soon after the original, never after thousands of newer messages.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Final
from urllib.parse import quote

from stomp.broker import USER_KEY_PREFIX, USER_PREFIX

#: Any broker topic (chatd's session topics, `chatd.domain.destinations`, are one kind).
BROKER_TOPIC_PREFIX: Final = "/topic/"
#: AMQP caps routing keys at 255 bytes; longer words are replaced by a digest.
MAX_WORD: Final = 80
DEFAULT_DEDUPE_SIZE: Final = 65_536


def escape_word(text: str) -> str:
    """`text` as one routing-key word: percent-encoded, with no `.`, `*`, `#` left.

    Words longer than `MAX_WORD` become ``%h`` and a SHA-256 digest: percent-encoding never
    produces ``%h``, so no short name can be spelled to collide with a digested one.
    """
    word = quote(text, safe="@+-_").replace(".", "%2E").replace("~", "%7E")
    if len(word) > MAX_WORD:
        return "%h" + hashlib.sha256(text.encode()).hexdigest()
    return word


def _user_parts(destination: str) -> tuple[str, str] | None:
    """(name, path) of a ``user:{name}:{path}`` key with both parts present, else None."""
    name, sep, path = destination[len(USER_KEY_PREFIX) :].rpartition(":")
    return (name, path) if sep and name else None


def routing_key(destination: str) -> str:
    """The routing key of a broker destination key.

    ``/topic/session.{id}`` -> ``topic.{id-word}`` ... precisely: ``topic.`` + the escaped
    rest; ``user:{name}:{path}`` (`stomp.broker.user_key`) -> ``user.{name}.{path}``; anything
    else -> ``other.{escaped}``. Raises ValueError for a user key that is not well formed.
    """
    if destination.startswith(BROKER_TOPIC_PREFIX):
        return "topic." + escape_word(destination[len(BROKER_TOPIC_PREFIX) :])
    if destination.startswith(USER_KEY_PREFIX):
        parts = _user_parts(destination)
        if parts is None or not parts[1].startswith("/"):
            raise ValueError(f"not a user destination key: {destination!r}")
        return f"user.{escape_word(parts[0])}.{escape_word(parts[1])}"
    if destination.startswith(USER_PREFIX):
        raise ValueError(f"resolve {destination!r} to a user key first")
    return "other." + escape_word(destination)


#: The path of `binding_destination`'s stand-in for all of a user's queues. Never a real
#: queue: those paths start with "/".
ALL_QUEUES: Final = "*"


def binding_destination(destination: str) -> str:
    """The destination whose binding carries `destination`'s messages: itself, except for a
    user queue (``user:{name}:/queue/...``), carried by the one binding of all that user's
    queues, ``user:{name}:*`` (`binding_key`: ``user.{name}.#``).

    Why one per user: after an instance restart its clients all come back at once, and each
    needed a bind per user queue (ack, error, receipts, messages, ...) besides its session
    topic's; those binds were most of the cost of taking the clients back. A message for a
    queue with no subscriber here may now arrive; the broker drops it like any message
    without a subscriber."""
    if destination.startswith(USER_KEY_PREFIX):
        parts = _user_parts(destination)
        if parts is not None and parts[1].startswith("/"):
            return f"{USER_KEY_PREFIX}{parts[0]}:{ALL_QUEUES}"
    return destination


def binding_key(destination: str) -> str:
    """The binding key of a `binding_destination`: ``user.{name}.#`` for a user's queues
    (the name is one escaped word, so the binding matches that user's keys only), else the
    destination's `routing_key`."""
    if destination.startswith(USER_KEY_PREFIX):
        parts = _user_parts(destination)
        if parts is not None and parts[1] == ALL_QUEUES:
            return f"user.{escape_word(parts[0])}.#"
    return routing_key(destination)


class Dedupe:
    """Remembers the last `size` message ids; `seen(id)` says whether one came before."""

    def __init__(self, size: int = DEFAULT_DEDUPE_SIZE) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        self.size = size
        self._ids: OrderedDict[str, None] = OrderedDict()
        self.duplicates = 0

    def seen(self, message_id: str) -> bool:
        """True (and counted) if `message_id` was seen within the window; else remember it."""
        ids = self._ids
        if message_id in ids:
            ids.move_to_end(message_id)
            self.duplicates += 1
            return True
        ids[message_id] = None
        if len(ids) > self.size:
            ids.popitem(last=False)
        return False

    def __len__(self) -> int:
        return len(self._ids)
