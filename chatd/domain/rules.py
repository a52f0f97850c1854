"""Pure input rules: identities, message content, client message ids and send rate limits.

Nothing here reads a clock or does I/O: time arrives as ``now`` (seconds, any monotonic origin),
so the same rules serve REST and STOMP and are testable without sleeping. The ``DEFAULT_*``
constants are the documented defaults; ``chatd.config`` takes its defaults from them and any
``[limits]`` section object satisfies the small protocols below, so this module never imports
the configuration layer.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from chatd.domain.errors import BadRequest, PayloadTooLarge, RateLimited
from chatd.domain.lru import Lru

DEFAULT_MAX_CONTENT_LENGTH = 4000
DEFAULT_ALLOW_CONTROL_CHARS = False
DEFAULT_SEND_BURST = 200
DEFAULT_SENDS_PER_SECOND = 20.0
DEFAULT_IDENTICAL_CONTENT = 20
DEFAULT_IDENTICAL_WINDOW_SECONDS = 10.0
DEFAULT_RATE_LIMIT_USERS = 100_000
DEFAULT_MAX_BATCH = 100
DEFAULT_HISTORY_LIMIT = 50
DEFAULT_HISTORY_MAX = 200
MAX_CLIENT_MESSAGE_ID_LENGTH = 100
#: Bytes one character of a text may take in JSON: a character outside the BMP written as two
#: ``\uXXXX`` escapes (``\ud83d\ude00``: Python's `json.dumps` default).
MAX_JSON_BYTES_PER_CHAR = 12
#: Room for the rest of a body around the text: keys, ids, `clientMessageId`.
BODY_OVERHEAD = 16 * 1024
MAX_EMAIL_LENGTH = 254

# RFC 5321 "atext" for the local part, minus "/" (and of course ":" and whitespace, which are not
# atext anyway): the email is embedded in `/user/...` routing keys and `user:{email}:/queue/...`
# outbox destinations, so separators must never appear in it. The domain must have a dot.
_EMAIL = re.compile(
    r"[a-z0-9!#$%&'*+=?^_`{|}~-]+(?:\.[a-z0-9!#$%&'*+=?^_`{|}~-]+)*"
    r"@(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
)
_ALLOWED_CONTROL = frozenset("\n\t")


class ContentLimits(Protocol):
    """What `validate_content` needs; `chatd.config.LimitsConfig` satisfies it."""

    @property
    def max_content_length(self) -> int: ...

    @property
    def allow_control_chars(self) -> bool: ...


class SendLimits(Protocol):
    """What `SendRateLimiter.from_limits` needs; `chatd.config.LimitsConfig` satisfies it."""

    @property
    def send_burst(self) -> int: ...

    @property
    def sends_per_second(self) -> float: ...

    @property
    def identical_content(self) -> int: ...

    @property
    def identical_window_seconds(self) -> float: ...

    @property
    def rate_limit_users(self) -> int: ...


def max_body_size(max_content_length: int) -> int:
    """The body limit in bytes (REST requests, STOMP `/app` frames) derived from the text
    limit in characters: a message within `max_content_length` fits however its JSON escapes
    it, and anything bigger is refused before it is read into memory."""
    return MAX_JSON_BYTES_PER_CHAR * max_content_length + BODY_OVERHEAD


#: Room per item of a batch send around its text: keys and a clientMessageId of up to 100
#: characters, each escaped at worst.
BATCH_ITEM_OVERHEAD = 2048


def batch_body_size(max_content_length: int, max_batch: int) -> int:
    """The body limit in bytes of a batch send (REST): `max_batch` items whose texts are
    within `max_content_length`, however their JSON escapes them."""
    per_item = MAX_JSON_BYTES_PER_CHAR * max_content_length + BATCH_ITEM_OVERHEAD
    return max_batch * per_item + BODY_OVERHEAD


@dataclass(frozen=True, slots=True)
class DefaultContentLimits:
    max_content_length: int = DEFAULT_MAX_CONTENT_LENGTH
    allow_control_chars: bool = DEFAULT_ALLOW_CONTROL_CHARS


DEFAULT_CONTENT_LIMITS = DefaultContentLimits()


def normalize_email(value: str) -> str:
    """Return the canonical form of an identity: trimmed and lower-cased (no validation)."""
    return value.strip().lower()


def is_email(value: str) -> bool:
    """True when `value` is already a canonical email chatd accepts as an identity."""
    return len(value) <= MAX_EMAIL_LENGTH and _EMAIL.fullmatch(value) is not None


def require_email(value: object, what: str = "email") -> str:
    """Return the normalized email, or raise `BadRequest` naming `what` if it is not one."""
    if not isinstance(value, str):
        raise BadRequest(f"{what} must be a string")
    email = normalize_email(value)
    if not is_email(email):
        raise BadRequest(f"{what} is not a valid email address")
    return email


def validate_content(content: object, limits: ContentLimits = DEFAULT_CONTENT_LIMITS) -> str:
    """Return `content` unchanged if it may be stored as a message text.

    Raises `BadRequest` for a non-string, empty or whitespace-only text, or a control character
    other than newline and tab (unless allowed); `PayloadTooLarge` above `max_content_length`
    characters (code points). Lone surrogates are always refused: they cannot be encoded as
    UTF-8 and would only fail later, in the store, as a 500.
    """
    if not isinstance(content, str):
        raise BadRequest("content must be a string")
    # Length first: it is O(1) and spares scanning a huge body character by character.
    if len(content) > limits.max_content_length:
        raise PayloadTooLarge(
            f"content is {len(content)} characters long; the limit is {limits.max_content_length}"
        )
    if not content.strip():
        raise BadRequest("content must not be empty")
    for char in content:
        category = unicodedata.category(char)
        if category == "Cs":
            raise BadRequest("content contains an invalid (surrogate) character")
        if category == "Cc" and char not in _ALLOWED_CONTROL and not limits.allow_control_chars:
            raise BadRequest(f"content contains a control character (U+{ord(char):04X})")
    return content


def validate_client_message_id(value: object) -> str:
    """Return the id if it is a non-empty printable string of at most 100 characters.

    Raises `BadRequest` otherwise. It is the idempotency key per sender, so it is kept verbatim.
    """
    if not isinstance(value, str) or not value:
        raise BadRequest("clientMessageId is required")
    if len(value) > MAX_CLIENT_MESSAGE_ID_LENGTH:
        raise BadRequest(
            f"clientMessageId is longer than {MAX_CLIENT_MESSAGE_ID_LENGTH} characters"
        )
    if not value.isprintable() or not value.strip():
        raise BadRequest("clientMessageId must be printable text")
    return value


def parse_history_limit(
    value: object, *, default: int = DEFAULT_HISTORY_LIMIT, maximum: int = DEFAULT_HISTORY_MAX
) -> int:
    """Return the page size asked for (a query string or int), `default` when absent.

    Raises `BadRequest` for a non-integer or a value below 1; values above `maximum` are
    clamped rather than refused, as clients commonly ask for "a lot".
    """
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise BadRequest("limit must be a positive integer")
    try:
        limit = int(value) if isinstance(value, int | str) else int(str(value))
    except ValueError:
        raise BadRequest("limit must be a positive integer") from None
    if limit < 1:
        raise BadRequest("limit must be a positive integer")
    return min(limit, maximum)


def text_digest(content: str) -> bytes:
    """The 16-byte digest the identical-text rule keeps instead of the text."""
    return hashlib.blake2b(content.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def too_many_sends(wait: float, batch: int = 1) -> RateLimited:
    """The refusal of a send (or a batch of `batch`) over the token bucket (retry in `wait`
    seconds)."""
    what = "too many messages" if batch == 1 else f"too many messages for a batch of {batch}"
    return RateLimited(f"{what}; retry in {wait:.1f} s", retry_after=wait)


def too_many_identical(count: int, window: float, wait: float) -> RateLimited:
    """The refusal of a text already accepted `count` times within `window` seconds."""
    return RateLimited(
        f"the same message was sent {count} times in {window:g} s; retry in {wait:.1f} s",
        retry_after=wait,
    )


@dataclass(slots=True)
class _UserState:
    tokens: float
    updated: float
    # Every accepted send still inside the identical-content window, oldest first, with a count
    # per content digest. Its length is bounded by the token bucket (burst + rate * window).
    recent: deque[tuple[float, bytes]] = field(default_factory=deque)
    counts: Counter[bytes] = field(default_factory=Counter)


class SendRateLimiter:
    """Per-user send limits: a token bucket plus a cap on identical texts in a sliding window.

    The bucket holds `send_burst` sends and refills at `sends_per_second`. Independently, at
    most `identical_content` sends of the same text are accepted within any
    `identical_window_seconds`; the next one is refused until the oldest of them leaves the
    window. A refused send consumes nothing.

    Memory is bounded: user states live in an LRU of `max_users` entries. Evicting a state only
    forgets something if more than `max_users` distinct users sent within the last
    `send_burst / sends_per_second` seconds (an idle user's state equals a fresh one), and a
    state's history is itself bounded by the bucket. Texts are kept as 16-byte digests.
    """

    def __init__(
        self,
        *,
        send_burst: int = DEFAULT_SEND_BURST,
        sends_per_second: float = DEFAULT_SENDS_PER_SECOND,
        identical_content: int = DEFAULT_IDENTICAL_CONTENT,
        identical_window_seconds: float = DEFAULT_IDENTICAL_WINDOW_SECONDS,
        max_users: int = DEFAULT_RATE_LIMIT_USERS,
    ) -> None:
        if send_burst < 1 or sends_per_second <= 0:
            raise ValueError("send_burst must be >= 1 and sends_per_second > 0")
        if identical_content < 1 or identical_window_seconds < 0 or max_users < 1:
            raise ValueError(
                "identical_content and max_users must be >= 1, identical_window_seconds >= 0"
            )
        self.send_burst = send_burst
        self.sends_per_second = sends_per_second
        self.identical_content = identical_content
        self.identical_window_seconds = identical_window_seconds
        self.max_users = max_users
        self._users: Lru[str, _UserState] = Lru(max_users)

    @classmethod
    def from_limits(cls, limits: SendLimits) -> SendRateLimiter:
        """Build a limiter from a `[limits]` section (or anything shaped like it)."""
        return cls(
            send_burst=limits.send_burst,
            sends_per_second=limits.sends_per_second,
            identical_content=limits.identical_content,
            identical_window_seconds=limits.identical_window_seconds,
            max_users=limits.rate_limit_users,
        )

    def __len__(self) -> int:
        """Number of users whose state is currently remembered."""
        return len(self._users)

    def check(self, user: str, content: str, now: float) -> int:
        """Record a send by `user` at `now`, or refuse it; return how many times this text
        was accepted within the window, this send included (1: a new text).

        Raises `RateLimited` (with `retry_after` in seconds, > 0) when the bucket is empty or
        the same text was already accepted `identical_content` times within the window. An
        idempotent repeat must not be counted: `refund` it.
        """
        [count] = self.check_many(user, (content,), now)
        return count

    def check_many(self, user: str, contents: Sequence[str], now: float) -> list[int]:
        """Record one send per text in `contents` (a batch send) at `now`, or refuse them all
        and record nothing: the batch needs a token per text, and no text may pass the
        identical-content cap counting the batch's own copies. `RateLimited` as `check`; a
        batch that can never pass (more identical texts than the cap) waits the window.
        Returns, per text, how many times it was accepted within the window up to it."""
        state = self._users.get(user)  # marks the user most recently used
        if state is None:
            state = _UserState(tokens=float(self.send_burst), updated=now)
            self._users.put(user, state)

        elapsed = max(0.0, now - state.updated)
        state.tokens = min(float(self.send_burst), state.tokens + elapsed * self.sends_per_second)
        state.updated = max(state.updated, now)

        horizon = now - self.identical_window_seconds
        while state.recent and state.recent[0][0] <= horizon:
            _, old = state.recent.popleft()
            state.counts[old] -= 1
            if not state.counts[old]:
                del state.counts[old]

        need = len(contents)
        if state.tokens < need:
            raise too_many_sends((need - state.tokens) / self.sends_per_second, need)

        digests = [text_digest(text) for text in contents]
        for digest, copies in Counter(digests).items():
            excess = state.counts[digest] + copies - self.identical_content
            if excess <= 0:
                continue
            # room comes when the `excess` oldest accepted copies have left the window
            times = [t for t, d in state.recent if d == digest]
            leaves = times[excess - 1] if excess <= len(times) else now
            wait = max(leaves + self.identical_window_seconds - now, 1e-3)
            raise too_many_identical(
                state.counts[digest] + copies - 1, self.identical_window_seconds, wait
            )

        state.tokens -= need
        counts = []
        for digest in digests:
            state.recent.append((now, digest))
            state.counts[digest] += 1
            counts.append(state.counts[digest])
        return counts

    def refund(self, user: str, content: str) -> None:
        """Undo one accepted `check` of `content` by `user`: the send turned out to be an
        idempotent repeat, which must not count. Lets the caller charge first and look for the
        original only when needed (one store round trip fewer per send)."""
        state = self._users.get(user)
        if state is None:
            return
        digest = text_digest(content)
        for i in range(len(state.recent) - 1, -1, -1):
            if state.recent[i][1] == digest:
                del state.recent[i]
                state.counts[digest] -= 1
                if not state.counts[digest]:
                    del state.counts[digest]
                state.tokens = min(float(self.send_burst), state.tokens + 1.0)
                return
