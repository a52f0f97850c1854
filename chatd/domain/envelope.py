"""The end-to-end encrypted message envelope: the only `content` an encrypted session takes.

In an encrypted session (docs/security.md, End-to-end encrypted sessions) the server stores and
relays ciphertext it cannot read, so all it can check is the envelope's *shape*:

    {"v":1,"alg":"ECDH-P256+HKDF-SHA256+A256GCM","kid":K,"rkid":R,"salt":S,"iv":I,"ct":C}

sent as a JSON *string* in ``content`` (so it is stored and relayed byte for byte, like any
text). ``kid`` is the sender's key id, ``rkid`` the recipient's (both RFC 7638 thumbprints:
32 bytes), ``salt`` the HKDF salt (16 bytes), ``iv`` the AES-GCM nonce (12 bytes), ``ct`` the
ciphertext with its 16-byte tag; every binary field is unpadded base64url. The ciphertext may
hold at most ``max_content_length`` bytes of plaintext: the limit of a plain text, applied to
what the server can measure. Every rule lives here; errors never echo the content.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any, Final

from chatd.domain.errors import BadRequest, PayloadTooLarge
from chatd.domain.rules import DEFAULT_CONTENT_LIMITS, ContentLimits

VERSION: Final = 1
ALGORITHM: Final = "ECDH-P256+HKDF-SHA256+A256GCM"
KEY_ID_BYTES: Final = 32
SALT_BYTES: Final = 16
IV_BYTES: Final = 12
TAG_BYTES: Final = 16
#: Every member, in the order clients are asked to write them (any order is accepted).
FIELDS: Final = ("v", "alg", "kid", "rkid", "salt", "iv", "ct")
#: JSON around the base64url fields: keys, quotes, the algorithm, some room for whitespace.
_OVERHEAD: Final = 512
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_PREFIX: Final = '{"v":1,'


def max_envelope_length(limits: ContentLimits = DEFAULT_CONTENT_LIMITS) -> int:
    """The longest envelope string worth parsing: the largest ciphertext, encoded, plus JSON."""
    return _b64_length(limits.max_content_length + TAG_BYTES) + _OVERHEAD


def _b64_length(size: int) -> int:
    return (size * 4 + 2) // 3


def b64url_decode(value: object, what: str) -> bytes:
    """Strict unpadded base64url (the canonical spelling only); `BadRequest` naming `what`."""
    if not isinstance(value, str) or _B64URL.fullmatch(value) is None or len(value) % 4 == 1:
        raise BadRequest(f"{what} must be unpadded base64url")
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise BadRequest(f"{what} must be unpadded base64url") from None
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != value:
        raise BadRequest(f"{what} is not canonical base64url")
    return raw


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data = dict(pairs)
    if len(data) != len(pairs):
        raise BadRequest("envelope has a repeated member")
    return data


def validate_envelope(content: object, limits: ContentLimits = DEFAULT_CONTENT_LIMITS) -> str:
    """Return `content` unchanged if it is a well-formed envelope.

    Raises `BadRequest` with the reason (not a string, not a JSON object, a missing, unknown
    or malformed member, a field of the wrong size) and `PayloadTooLarge` when the ciphertext
    holds more than ``max_content_length`` bytes of plaintext.
    """
    if not isinstance(content, str):
        raise BadRequest("content of an encrypted session must be the envelope as a JSON string")
    if len(content) > max_envelope_length(limits):
        raise PayloadTooLarge(
            f"envelope is {len(content)} characters long; the limit is "
            f"{max_envelope_length(limits)}"
        )
    try:
        data = json.loads(content, object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError):
        raise BadRequest(
            "content of an encrypted session must be an envelope "
            f"{{{', '.join(FIELDS)}}} (not JSON)"
        ) from None
    if not isinstance(data, dict):
        raise BadRequest("envelope must be a JSON object")
    missing = [f for f in FIELDS if f not in data]
    if missing:
        raise BadRequest(f"envelope lacks {', '.join(missing)}")
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise BadRequest(f"envelope has unknown members: {', '.join(unknown)[:200]}")
    if type(data["v"]) is not int or data["v"] != VERSION:
        raise BadRequest(f"envelope v must be {VERSION}")
    if data["alg"] != ALGORITHM:
        raise BadRequest(f"envelope alg must be {ALGORITHM}")
    for name, size in (
        ("kid", KEY_ID_BYTES),
        ("rkid", KEY_ID_BYTES),
        ("salt", SALT_BYTES),
        ("iv", IV_BYTES),
    ):
        if len(b64url_decode(data[name], f"envelope {name}")) != size:
            raise BadRequest(f"envelope {name} must be {size} bytes")
    ct = b64url_decode(data["ct"], "envelope ct")
    if len(ct) <= TAG_BYTES:
        raise BadRequest(f"envelope ct must hold the {TAG_BYTES}-byte tag and some ciphertext")
    if len(ct) - TAG_BYTES > limits.max_content_length:
        raise PayloadTooLarge(
            f"ciphertext holds {len(ct) - TAG_BYTES} bytes; the limit is "
            f"{limits.max_content_length}"
        )
    return content


def looks_like_envelope(text: str) -> bool:
    """A cheap guess for log redaction: True for text shaped like an envelope (compact JSON
    starting ``{"v":1,`` or any JSON object naming the algorithm)."""
    head = text.lstrip()
    return head.startswith(_PREFIX) or (head.startswith("{") and ALGORITHM in text)
