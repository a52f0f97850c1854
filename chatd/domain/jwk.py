"""Public keys of end-to-end encrypted chats: strict JWK validation and key ids.

A user publishes an ECDH P-256 key (key agreement) and optionally an ECDSA P-256 key
(signing) as JWKs. The server never sees a private key: a JWK carrying ``d`` (or any private
member) is refused, as is one on another curve or whose point is not on P-256 (checked by
`cryptography`, which refuses invalid points). What is stored is the canonical public JWK
``{"crv","kty","x","y"}`` (RFC 7638 member order), and the key id is its RFC 7638 thumbprint
(SHA-256, unpadded base64url): clients can compute it themselves, so a server cannot swap a key
under a known id without the ids differing.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric import ec

from chatd.domain.envelope import b64url_decode
from chatd.domain.errors import BadRequest

#: Keys one user may publish in all (each announced to every peer): `[limits] max_public_keys`.
DEFAULT_MAX_PUBLIC_KEYS: Final = 100
CURVE: Final = "P-256"
COORDINATE_BYTES: Final = 32
#: Members a browser's exported public JWK may carry besides the key itself; ignored.
_TOLERATED: Final = frozenset({"ext", "key_ops", "alg", "use", "kid"})
_PUBLIC: Final = frozenset({"kty", "crv", "x", "y"})
#: Private members of any JWK type (RFC 7518 section 6): never accepted.
_PRIVATE: Final = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
#: What each use's ``key_ops`` may list when present (WebCrypto exports ``[]`` for ECDH).
_OPS: Final = {
    "agreement": frozenset({"deriveKey", "deriveBits"}),
    "signing": frozenset({"verify"}),
}
_ALG: Final = {"agreement": frozenset({"ECDH-ES"}), "signing": frozenset({"ES256"})}


@dataclass(frozen=True, slots=True)
class PublicJwk:
    """A validated public P-256 key: `canonical` is the JWK text stored and served."""

    canonical: str
    thumbprint: str

    def to_json(self) -> dict[str, Any]:
        """The JWK as a JSON object."""
        value: dict[str, Any] = json.loads(self.canonical)
        return value


def parse_public_jwk(value: object, name: str, use: str) -> PublicJwk:
    """Validate `value` as a public P-256 JWK for `use` (``agreement`` or ``signing``).

    Raises `BadRequest` naming `name` and the reason: not an object, a private member, a
    member that is not a JWK member, another key type or curve, coordinates of the wrong
    size or encoding, a point not on the curve, or ``key_ops``/``alg``/``use`` for another use.
    """
    if not isinstance(value, dict):
        raise BadRequest(f"{name} must be a JWK object")
    private = sorted(_PRIVATE & set(value))
    if private:
        raise BadRequest(
            f"{name} holds private key material ({', '.join(private)}): publish the public key only"
        )
    unknown = sorted(set(value) - _PUBLIC - _TOLERATED)
    if unknown:
        raise BadRequest(
            f"{name} has members that are not public EC JWK members: "
            f"{', '.join(str(u) for u in unknown)[:200]}"
        )
    if value.get("kty") != "EC":
        raise BadRequest(f"{name} kty must be EC")
    if value.get("crv") != CURVE:
        raise BadRequest(f"{name} crv must be {CURVE}")
    _check_use(value, name, use)
    coords = []
    for axis in ("x", "y"):
        raw = b64url_decode(value.get(axis), f"{name}.{axis}")
        if len(raw) != COORDINATE_BYTES:
            raise BadRequest(f"{name}.{axis} must be {COORDINATE_BYTES} bytes")
        coords.append(int.from_bytes(raw, "big"))
    try:
        ec.EllipticCurvePublicNumbers(coords[0], coords[1], ec.SECP256R1()).public_key()
    except ValueError:
        raise BadRequest(f"{name} is not a point on {CURVE}") from None
    canonical = json.dumps(
        {"crv": CURVE, "kty": "EC", "x": value["x"], "y": value["y"]}, separators=(",", ":")
    )
    digest = hashlib.sha256(canonical.encode()).digest()
    thumbprint = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    return PublicJwk(canonical, thumbprint)


def _check_use(value: dict[str, Any], name: str, use: str) -> None:
    ops = value.get("key_ops")
    if ops is not None:
        if not isinstance(ops, list) or not all(isinstance(o, str) for o in ops):
            raise BadRequest(f"{name} key_ops must be a list of strings")
        wrong = sorted(set(ops) - _OPS[use])
        if wrong:
            raise BadRequest(f"{name} key_ops {', '.join(wrong)[:100]} do not fit a {use} key")
    alg = value.get("alg")
    if alg is not None and alg not in _ALG[use]:
        raise BadRequest(f"{name} alg must be one of {', '.join(sorted(_ALG[use]))}")
    jwk_use = value.get("use")
    expected = "sig" if use == "signing" else "enc"
    if jwk_use is not None and jwk_use != expected:
        raise BadRequest(f"{name} use must be {expected}")
    kid = value.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise BadRequest(f"{name} kid must be a string")
