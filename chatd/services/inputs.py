"""Parsing of caller-supplied values shared by REST and STOMP: session ids, seq cursors,
intents, receipt selections and batch sends.

They live next to the services (not in the HTTP layer) because the STOMP handlers receive the
same fields in JSON bodies and must refuse them with the same messages. Every function raises
`BadRequest` (400) and never anything else, so a malformed value can not surface as a 500.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Sequence

from chatd.domain.errors import BadRequest, ChatError
from chatd.domain.rules import validate_client_message_id

MAX_INTENT_LENGTH = 64
MAX_RECEIPT_MESSAGE_IDS = 1000
# Bigger than any seq a session can reach, small enough for a BIGINT and a JSON number.
MAX_SEQ = 2**53 - 1

# Intents end up in unique keys and log lines; a conservative alphabet keeps both readable.
_INTENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*")


def parse_session_id(value: object) -> uuid.UUID:
    """The session id as a UUID; `BadRequest` when it is missing or not a UUID."""
    if isinstance(value, uuid.UUID):
        return value
    if not isinstance(value, str) or not value.strip():
        raise BadRequest("sessionId is required")
    try:
        return uuid.UUID(value.strip())
    except ValueError:
        raise BadRequest(f"sessionId {value.strip()[:64]!r} is not a UUID") from None


def parse_seq(value: object, name: str) -> int | None:
    """An optional non-negative seq (a query string or a JSON integer); None when absent.

    Booleans and floats are refused: JSON ``true`` or ``1.5`` as a cursor is a client bug.
    """
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise BadRequest(f"{name} must be a non-negative integer")
    if isinstance(value, str):
        text = value.strip()
        if not text.isascii() or not text.isdigit():
            raise BadRequest(f"{name} must be a non-negative integer")
        value = int(text)
    if not 0 <= value <= MAX_SEQ:
        raise BadRequest(f"{name} must be a non-negative integer")
    return value


def validate_intent(value: object) -> str:
    """The intent verbatim (case matters: it is part of the session key); `BadRequest` if
    missing, longer than 64 characters or outside ``[A-Za-z0-9_.:-]``."""
    if not isinstance(value, str) or not value:
        raise BadRequest("intent is required")
    if len(value) > MAX_INTENT_LENGTH:
        raise BadRequest(f"intent is longer than {MAX_INTENT_LENGTH} characters")
    if _INTENT.fullmatch(value) is None:
        raise BadRequest("intent may only contain letters, digits and _ . : -")
    return value


def parse_flag(value: object, name: str) -> bool:
    """An optional JSON boolean (absent or null is False); anything else is a `BadRequest`:
    ``"false"`` or ``0`` would read as the opposite of what a client meant somewhere."""
    if value is None:
        return False
    if not isinstance(value, bool):
        raise BadRequest(f"{name} must be true or false")
    return value


def parse_receipt_selection(
    up_to_seq: object, message_ids: object
) -> tuple[int | None, list[uuid.UUID] | None]:
    """Validate a delivered/seen request: ``upToSeq`` or a non-empty ``messageIds`` list.

    Returns (up_to_seq, message_ids) with exactly one of them set. Giving both is refused:
    the two selections could disagree and either reading of them would surprise someone.
    """
    seq = parse_seq(up_to_seq, "upToSeq")
    if message_ids is None:
        if seq is None:
            raise BadRequest("give upToSeq or messageIds")
        return seq, None
    if seq is not None:
        raise BadRequest("give either upToSeq or messageIds, not both")
    if isinstance(message_ids, str) or not isinstance(message_ids, Sequence) or not message_ids:
        raise BadRequest("messageIds must be a non-empty array of message ids")
    if len(message_ids) > MAX_RECEIPT_MESSAGE_IDS:
        raise BadRequest(f"messageIds holds more than {MAX_RECEIPT_MESSAGE_IDS} ids")
    ids: list[uuid.UUID] = []
    for item in message_ids:
        try:
            ids.append(uuid.UUID(item) if isinstance(item, str) else _not_a_uuid())
        except ValueError:
            raise BadRequest("messageIds must hold message ids (UUIDs)") from None
    return None, ids


def _not_a_uuid() -> uuid.UUID:
    raise ValueError("not a string")


def parse_batch(
    messages: object, *, max_batch: int, validate: Callable[[object], str]
) -> list[tuple[str, str]]:
    """A batch send's ``messages``: a non-empty array of at most `max_batch` objects
    ``{content, clientMessageId}``; returns (clientMessageId, content) per item, in order.
    `validate` is the session's content rule (`rules.validate_content` with the limits, or
    `envelope.validate_envelope` in an encrypted session): it returns the content or raises.

    All or nothing: the first bad item (missing or invalid field, too long or empty text, a
    clientMessageId repeated within the batch) is a `BadRequest` naming its index and why,
    e.g. ``messages[3]: content must not be empty`` (too long a text too: the batch as a
    whole is the request, and it is not too large).
    """
    if isinstance(messages, str | bytes) or not isinstance(messages, Sequence):
        raise BadRequest("messages must be an array of {content, clientMessageId} objects")
    if not messages:
        raise BadRequest("messages must not be empty")
    if len(messages) > max_batch:
        raise BadRequest(f"messages holds {len(messages)} items; the limit is {max_batch}")
    items: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(messages):
        try:
            if not isinstance(item, dict):
                raise BadRequest("must be an object {content, clientMessageId}")
            cmid = validate_client_message_id(item.get("clientMessageId"))
            text = validate(item.get("content"))
        except ChatError as exc:
            raise BadRequest(f"messages[{index}]: {exc.message}") from None
        if cmid in seen:
            raise BadRequest(f"messages[{index}]: clientMessageId repeats messages[{seen[cmid]}]")
        seen[cmid] = index
        items.append((cmid, text))
    return items
