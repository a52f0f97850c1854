"""Public keys of end-to-end encrypted chats: publishing one's own, reading a peer's.

Who may read a user's keys (docs/security.md, End-to-end encrypted sessions): the user, and
whoever shares a session with them, plain or encrypted, any intent. "Initiating" an encrypted
chat therefore means calling ``POST /api/chat/init`` first (which needs both profiles to exist
in the intent) and then fetching the peer's key. Anyone else gets 403, whether or not the user
exists or published a key, so the answer tells a stranger nothing.
"""

from __future__ import annotations

from typing import Any, Final

from chatd.domain.errors import BadRequest, Forbidden, NotFound
from chatd.domain.jwk import parse_public_jwk
from chatd.domain.models import PublicKey
from chatd.domain.rules import require_email
from chatd.services.chat import ChatService, Clock
from chatd.storage.base import Store

#: The members of a ``PUT /api/keys/me`` body.
PUT_FIELDS: Final = frozenset({"agreementKey", "signingKey", "kid"})
MAX_KID_LENGTH: Final = 64


class KeyService:
    """Publishing and reading public keys; methods take the caller's email first and raise
    `BadRequest`, `Forbidden`, `NotFound`, `Conflict` or `Unavailable`."""

    def __init__(self, store: Store, *, clock: Clock, max_keys: int) -> None:
        self.store = store
        self.clock = clock
        self.max_keys = max_keys

    @classmethod
    def beside(cls, chat: ChatService) -> KeyService:
        """The key service over the chat service's store, clock and `[limits]`."""
        return cls(chat.store, clock=chat.clock, max_keys=chat.limits.max_public_keys)

    async def publish(self, caller: str, body: dict[str, Any]) -> tuple[PublicKey, bool]:
        """Make the body's keys the caller's current ones; (key, changed).

        The body is ``{agreementKey, signingKey?, kid?}``: JWKs validated by
        `chatd.domain.jwk.parse_public_jwk`; `kid`, when given, must be the agreement key's
        RFC 7638 thumbprint (so a client catches a key mangled on the way). A change is
        announced to the caller's peers on ``/user/queue/keys``.
        """
        unknown = sorted(set(body) - PUT_FIELDS)
        if unknown:
            raise BadRequest(
                f"unknown members: {', '.join(unknown)[:200]}; "
                f"allowed: {', '.join(sorted(PUT_FIELDS))}"
            )
        agreement = parse_public_jwk(body.get("agreementKey"), "agreementKey", "agreement")
        signing_value = body.get("signingKey")
        signing = (
            None
            if signing_value is None
            else parse_public_jwk(signing_value, "signingKey", "signing")
        )
        kid = body.get("kid")
        if kid is not None and kid != agreement.thumbprint:
            raise BadRequest(
                f"kid must be the RFC 7638 thumbprint of agreementKey ({agreement.thumbprint})"
            )
        key = PublicKey(
            caller,
            agreement.thumbprint,
            agreement.canonical,
            None if signing is None else signing.canonical,
            self.clock(),
        )
        return await self.store.put_public_key(key, max_keys=self.max_keys)

    async def current(self, caller: str, email: object) -> PublicKey:
        """The current key of `email` (``me`` is the caller); `NotFound` when none is
        published, `Forbidden` for a caller who may not read it (see the module docstring)."""
        owner = await self._readable(caller, email)
        key = await self.store.public_key(owner)
        if key is None:
            raise NotFound(f"{owner} has not published a public key")
        return key

    async def by_id(self, caller: str, email: object, kid: object) -> PublicKey:
        """The key `kid` of `email`, current or retired; `NotFound`, `Forbidden` as `current`."""
        owner = await self._readable(caller, email)
        if not isinstance(kid, str) or not kid or len(kid) > MAX_KID_LENGTH:
            raise BadRequest("kid is not a key id")
        key = await self.store.public_key(owner, kid)
        if key is None:
            raise NotFound(f"{owner} has no key {kid}")
        return key

    async def _readable(self, caller: str, email: object) -> str:
        owner = caller if email == "me" else require_email(email, "email")
        if owner != caller and not await self.store.shares_session(caller, owner):
            raise Forbidden("only users who share a session with this user may read their keys")
        return owner
