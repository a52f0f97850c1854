"""Helpers for the end-to-end encryption tests: real P-256 public JWKs and envelopes.

Envelopes here are made with real AES-GCM over a real ECDH secret (the demo client's scheme),
so a test that looks for the plaintext in the database or on the wire can not pass by luck.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from chatd.domain.envelope import ALGORITHM


def b64u(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def public_jwk(key: ec.EllipticCurvePrivateKey) -> dict[str, Any]:
    """The public JWK a browser would export for `key` (with its ``ext``/``key_ops``)."""
    numbers = key.public_key().public_numbers()
    return {
        "kty": "EC",
        "crv": "P-256",
        "x": b64u(numbers.x.to_bytes(32, "big")),
        "y": b64u(numbers.y.to_bytes(32, "big")),
        "ext": True,
        "key_ops": [],
    }


def thumbprint(jwk: dict[str, Any]) -> str:
    canonical = json.dumps({k: jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"))
    return b64u(hashlib.sha256(canonical.encode()).digest())


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def encrypt(
    sender: ec.EllipticCurvePrivateKey,
    recipient: ec.EllipticCurvePublicKey,
    session_id: str,
    text: str,
) -> str:
    """An envelope string for `text` (ECDH → HKDF-SHA256 with a random salt → AES-256-GCM)."""
    kid = thumbprint(public_jwk(sender))
    rkid = thumbprint({"crv": "P-256", "kty": "EC", **_coords(recipient)})
    salt, iv = os.urandom(16), os.urandom(12)
    secret = sender.exchange(ec.ECDH(), recipient)
    key = HKDF(hashes.SHA256(), 32, salt, b"chatd-e2e-v1").derive(secret)
    aad = f"chatd-e2e-v1|{session_id}|{kid}|{rkid}".encode()
    ct = AESGCM(key).encrypt(iv, text.encode(), aad)
    return json.dumps(
        {
            "v": 1,
            "alg": ALGORITHM,
            "kid": kid,
            "rkid": rkid,
            "salt": b64u(salt),
            "iv": b64u(iv),
            "ct": b64u(ct),
        },
        separators=(",", ":"),
    )


def _coords(key: ec.EllipticCurvePublicKey) -> dict[str, str]:
    n = key.public_numbers()
    return {"x": b64u(n.x.to_bytes(32, "big")), "y": b64u(n.y.to_bytes(32, "big"))}


def envelope(**changes: Any) -> dict[str, Any]:
    """A well-formed envelope object of random bytes, with `changes` applied (None deletes)."""
    value: dict[str, Any] = {
        "v": 1,
        "alg": ALGORITHM,
        "kid": b64u(os.urandom(32)),
        "rkid": b64u(os.urandom(32)),
        "salt": b64u(os.urandom(16)),
        "iv": b64u(os.urandom(12)),
        "ct": b64u(os.urandom(40)),
    }
    for name, new in changes.items():
        if new is None:
            value.pop(name)
        else:
            value[name] = new
    return value


def envelope_text(**changes: Any) -> str:
    return json.dumps(envelope(**changes), separators=(",", ":"))
