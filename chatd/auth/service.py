"""Service-to-service tokens: how chatd proves itself to the profile service.

Each call carries ``Authorization: Bearer <jwt>``: RS256 with the service's own private key,
``iss`` = our service name, ``sub`` = ``aud`` = the profile service, ``kid`` from config and a
lifetime of at most two minutes, so a leaked token is worth little. Minting costs an RSA
signature (~1 ms), so one token is reused until it nears its end and renewed then: a token is
never sent with less than `renew_before` seconds left, which covers the request's own flight
time and clock skew at the receiver.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Final

from cryptography.hazmat.primitives.asymmetric import rsa

from chatd.auth.keys import load_private_key
from chatd.auth.tokens import mint_token

if TYPE_CHECKING:
    from chatd.config import ProfilesConfig

#: The longest lifetime a service token may have (the profile service refuses longer ones).
MAX_SERVICE_TOKEN_TTL: Final = 120
DEFAULT_SERVICE_TOKEN_TTL: Final = 60


class ServiceTokens:
    """Mints, caches and renews this service's bearer token for one audience.

    `clock` returns wall-clock seconds (JWT times are wall-clock); tests pass a fake one.
    `minted` counts signatures made, so renewal is observable.
    """

    def __init__(
        self,
        private_key: rsa.RSAPrivateKey | Path | bytes | str,
        *,
        issuer: str,
        audience: str,
        kid: str | None = None,
        ttl: int = DEFAULT_SERVICE_TOKEN_TTL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 1 <= ttl <= MAX_SERVICE_TOKEN_TTL:
            raise ValueError(f"service token lifetime must be 1..{MAX_SERVICE_TOKEN_TTL} s")
        self._key = load_private_key(private_key)
        self.issuer = issuer
        self.audience = audience
        self.kid = kid
        self.ttl = ttl
        #: Renew when less than this is left: a third of the lifetime, at most 30 s.
        self.renew_before = min(30.0, ttl / 3)
        self._clock = clock
        self._token = ""
        self._expires = 0.0
        self.minted = 0

    @classmethod
    def from_config(cls, profiles: ProfilesConfig) -> ServiceTokens:
        """The tokens ``[profiles]`` describes; raises `KeyFileError` when its key cannot be
        loaded."""
        assert profiles.service_private_key_file is not None
        return cls(
            profiles.service_private_key_file,
            issuer=profiles.service_name,
            audience=profiles.audience,
            kid=profiles.kid,
            ttl=profiles.service_token_ttl,
        )

    def token(self) -> str:
        """A valid token with at least `renew_before` seconds left (minted when needed)."""
        now = self._clock()
        if now >= self._expires - self.renew_before:
            issued = int(now)
            self._token = mint_token(
                self._key,
                self.audience,
                self.ttl,
                issuer=self.issuer,
                audience=self.audience,
                kid=self.kid,
                now=issued,
            )
            self._expires = issued + self.ttl
            self.minted += 1
        return self._token

    def authorization(self) -> str:
        """The ``Authorization`` header value."""
        return f"Bearer {self.token()}"


__all__ = ["DEFAULT_SERVICE_TOKEN_TTL", "MAX_SERVICE_TOKEN_TTL", "ServiceTokens"]
