"""RS256 bearer tokens: verify a client's JWT into its identity, mint dev and test tokens.

The algorithm is pinned to RS256 and never taken from the token header: that closes both the
``alg: none`` hole and the classic confusion where an HS256 token is "signed" with the bytes of
our public key. Keys are parsed once, at construction (an RS256 verify then costs ~60 µs).
Every failure becomes `Unauthenticated` with a message safe to show the caller (401, never 500).

Keys come from a PEM file or a JWKS URL (`chatd.auth.jwks.JwksKeys`, refreshed while running);
`TokenVerifier.authenticate` is the async entry point that may refresh a JWKS when a token names
an unknown ``kid``, `verify`/`identify` the synchronous ones over the keys already known.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jwt
from cachetools import LRUCache
from cryptography.hazmat.primitives.asymmetric import rsa

from chatd.auth.keys import KeyFileError, ensure_dev_keys, load_private_key, load_public_key
from chatd.domain.errors import Unauthenticated
from chatd.domain.rules import is_email, normalize_email

if TYPE_CHECKING:
    import httpx

    from chatd.auth.jwks import JwksKeys
    from chatd.config import Config

ALGORITHM = "RS256"
#: Tokens whose signature was checked, kept to skip the RSA check on the next request.
VERIFIED_CACHE_SIZE = 10_000

# PyJWT's own texts are fine for logs but vary between versions; callers get stable ones.
_MESSAGES: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, "token expired"),
    (jwt.ImmatureSignatureError, "token not yet valid"),
    (jwt.InvalidAlgorithmError, "token algorithm not allowed (RS256 only)"),
    (jwt.InvalidSignatureError, "token signature is invalid"),
    (jwt.InvalidIssuerError, "token issuer not accepted"),
    (jwt.InvalidAudienceError, "token audience not accepted"),
    (jwt.DecodeError, "malformed token"),
)


class UnknownKey(Unauthenticated):
    """The token names a ``kid`` no known key has (a JWKS refresh may help)."""


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a verified token speaks for, and until when (``exp``, epoch seconds)."""

    email: str
    expires_at: float


class KeySet:
    """Public keys by ``kid``, e.g. from a JWKS document; replaceable as a whole on refresh."""

    def __init__(self, keys: Mapping[str, rsa.RSAPublicKey]) -> None:
        self._keys = dict(keys)

    @property
    def kids(self) -> list[str]:
        return list(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    @classmethod
    def from_jwks(cls, document: Mapping[str, Any]) -> KeySet:
        """Keep the RSA signing keys of a JWKS document (others are ignored); raise ValueError."""
        keys: dict[str, rsa.RSAPublicKey] = {}
        for entry in document.get("keys", []):
            if entry.get("kty") != "RSA" or entry.get("use", "sig") != "sig" or "kid" not in entry:
                continue
            key = jwt.PyJWK.from_dict(dict(entry), algorithm=ALGORITHM).key
            if isinstance(key, rsa.RSAPublicKey):
                keys[str(entry["kid"])] = key
        if not keys:
            raise ValueError("JWKS document holds no RSA signing key with a kid")
        return cls(keys)

    def key_for(self, kid: str | None) -> rsa.RSAPublicKey:
        """The key for `kid` (the only key if `kid` is None and there is one); else raise."""
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        if kid is None:
            raise Unauthenticated("token header has no kid")
        if not isinstance(kid, str):
            raise Unauthenticated("malformed token")
        try:
            return self._keys[kid]
        except KeyError:
            raise UnknownKey("token signed with an unknown key") from None


def fetch_jwks(
    url: str, *, timeout: float = 5.0, transport: httpx.BaseTransport | None = None
) -> KeySet:
    """Download a JWKS document, blocking; raise `KeyFileError` naming `url` on any failure.

    Meant for start-up, before the port opens (periodic refresh is the caller's business).
    """
    import httpx

    try:
        with httpx.Client(timeout=timeout, transport=transport) as client:
            response = client.get(url)
            response.raise_for_status()
            return KeySet.from_jwks(response.json())
    except (httpx.HTTPError, ValueError, jwt.PyJWKError) as exc:
        raise KeyFileError(url, f"cannot load JWKS: {exc}") from None


class TokenVerifier:
    """Checks client JWTs: RS256 only, ``exp`` and ``sub`` required, ``nbf``/``iat`` honoured.

    `issuer` and `audience`, when given, must match; when `audience` is None an ``aud`` claim
    is ignored rather than refused (it is addressed to whoever configured one).
    """

    def __init__(
        self,
        key: rsa.RSAPublicKey | KeySet | JwksKeys | bytes | str,
        *,
        issuer: str | None = None,
        audience: str | None = None,
        leeway: float = 30.0,
    ) -> None:
        from chatd.auth.jwks import JwksKeys

        self.jwks = key if isinstance(key, JwksKeys) else None
        self._keys = key if isinstance(key, KeySet) else None
        self._key = None if isinstance(key, KeySet | JwksKeys) else load_public_key(key)
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway
        # A client sends the same token on every request: its RSA check (~0.15 ms of CPU) is
        # done once per token and key set; expiry is still checked on every use.
        self._verified: LRUCache[str, Identity] = LRUCache(VERIFIED_CACHE_SIZE)
        self._verified_with: object = None

    def replace_keys(self, keys: KeySet) -> None:
        """Swap in a refreshed key set (JWKS rotation); only for a verifier built on a KeySet."""
        if self._keys is None:
            raise TypeError("this verifier uses a single static key")
        self._keys = keys

    def _key_for(self, token: str) -> rsa.RSAPublicKey:
        keys = self.jwks.keys if self.jwks is not None else self._keys
        if keys is not None:
            return keys.key_for(jwt.get_unverified_header(token).get("kid"))
        assert self._key is not None
        return self._key

    def claims(self, token: str | None) -> dict[str, Any]:
        """The verified claims of `token`; raise `Unauthenticated` for any defect."""
        if not token or not token.strip():
            raise Unauthenticated("missing bearer token")
        token = token.strip()
        try:
            key = self._key_for(token)
            return jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                issuer=self.issuer,
                audience=self.audience,
                leeway=self.leeway,
                options={
                    "require": ["exp", "sub"],
                    "verify_aud": self.audience is not None,
                    "verify_iss": self.issuer is not None,
                },
            )
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthenticated(f"token lacks the {exc.claim!r} claim") from None
        except jwt.PyJWTError as exc:
            for kind, message in _MESSAGES:
                if isinstance(exc, kind):
                    raise Unauthenticated(message) from None
            raise Unauthenticated("invalid token") from None

    def identify(self, token: str | None) -> Identity:
        """The caller's email (the ``sub`` claim trimmed and lower-cased) and token expiry.

        Raises `Unauthenticated` when the token is missing or invalid, or ``sub`` is no email.
        """
        keys = self.jwks.keys if self.jwks is not None else self._keys or self._key
        if keys is not self._verified_with:  # new keys (rotation): nothing checked stays
            self._verified.clear()
            self._verified_with = keys
        if token is not None and (known := self._verified.get(token)) is not None:
            if time.time() <= known.expires_at + self.leeway:
                return known
            del self._verified[token]
        claims = self.claims(token)
        subject = claims.get("sub")
        email = normalize_email(subject) if isinstance(subject, str) else ""
        if not is_email(email):
            raise Unauthenticated("token subject is not an email address")
        identity = Identity(email, float(claims["exp"]))
        assert token is not None  # claims() refused a missing one
        self._verified[token] = identity
        return identity

    def verify(self, token: str | None) -> str:
        """The caller's email; see `identify`."""
        return self.identify(token).email

    async def authenticate(self, token: str | None) -> Identity:
        """Like `identify`, but a token naming an unknown ``kid`` first makes a JWKS verifier
        fetch its keys again (rate-limited): a newly rotated key works without a restart."""
        try:
            return self.identify(token)
        except UnknownKey:
            if self.jwks is None or not await self.jwks.refresh_for_unknown_kid():
                raise
        return self.identify(token)


def bearer_token(header_value: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` value (scheme case-insensitive).

    Raises `Unauthenticated` when the header is absent, empty or uses another scheme.
    """
    if header_value is None or not header_value.strip():
        raise Unauthenticated("missing bearer token")
    scheme, _, token = header_value.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise Unauthenticated("authorization scheme must be Bearer")
    if not token.strip():
        raise Unauthenticated("missing bearer token")
    return token.strip()


def mint_token(
    private_key: rsa.RSAPrivateKey | bytes | str,
    email: str,
    ttl: float = 3600,
    issuer: str | None = None,
    audience: str | None = None,
    kid: str | None = None,
    *,
    now: float | None = None,
    extra_claims: Mapping[str, Any] | None = None,
) -> str:
    """An RS256 JWT for `email` valid `ttl` seconds from `now` (default: the wall clock).

    For dev tokens (`chatd token`), tests and service tokens. `extra_claims` override the
    standard ones, which lets tests build deliberately broken tokens.
    """
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {"sub": email, "iat": issued, "nbf": issued, "exp": issued + int(ttl)}
    if issuer is not None:
        claims["iss"] = issuer
    if audience is not None:
        claims["aud"] = audience
    claims.update(extra_claims or {})
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(claims, load_private_key(private_key), algorithm=ALGORITHM, headers=headers)


def verifier_from_config(config: Config) -> TokenVerifier:
    """The verifier `[auth]` asks for: a PEM file, a JWKS URL, or the dev pair in the data dir.

    With neither key source configured the dev pair is created if missing (the embedded
    default). A JWKS URL is fetched once, blocking: call this before the server starts (the
    supervisor keeps it fresh afterwards with `JwksKeys.run`).
    Raises `KeyFileError` when a key cannot be loaded.
    """
    from chatd.auth.jwks import JwksKeys

    auth = config.auth
    key: rsa.RSAPublicKey | JwksKeys
    if auth.jwks_url is not None:
        key = JwksKeys(
            auth.jwks_url,
            cache_seconds=auth.jwks_cache_seconds,
            min_refresh_seconds=auth.jwks_min_refresh_seconds,
            timeout=auth.jwks_timeout,
        )
        key.load()
    elif auth.public_key_file is not None:
        key = load_public_key(auth.public_key_file)
    else:
        _, public_path, _ = ensure_dev_keys(config.server.data_dir)
        key = load_public_key(public_path)
    return TokenVerifier(key, issuer=auth.issuer, audience=auth.audience, leeway=auth.leeway)


__all__ = [
    "ALGORITHM",
    "Identity",
    "KeyFileError",
    "KeySet",
    "TokenVerifier",
    "UnknownKey",
    "bearer_token",
    "fetch_jwks",
    "mint_token",
    "verifier_from_config",
]
