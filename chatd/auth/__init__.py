"""Authentication: RS256 client tokens (PEM or JWKS), key files, dev keys for the default setup.

Importing this package pulls in PyJWT and cryptography but nothing of the web or STOMP layers,
so the HTTP handlers and the broker's CONNECT hook share one verifier.
"""

from chatd.auth.keys import (
    KeyFileError,
    dev_signing_key,
    ensure_dev_keys,
    load_private_key,
    load_public_key,
    write_key_pair,
)
from chatd.auth.tokens import KeySet, TokenVerifier, bearer_token, mint_token, verifier_from_config

__all__ = [
    "KeyFileError",
    "KeySet",
    "TokenVerifier",
    "bearer_token",
    "dev_signing_key",
    "ensure_dev_keys",
    "load_private_key",
    "load_public_key",
    "mint_token",
    "verifier_from_config",
    "write_key_pair",
]
