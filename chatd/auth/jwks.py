"""Client-token keys from a JWKS URL, kept fresh without a restart.

The identity provider rotates its signing keys by publishing the new one in its JWKS and then
signing with it. We pick that up two ways:

- periodically (`run`, every `cache_seconds`), so retired keys stop being trusted;
- at once when a token names a ``kid`` we do not know (`refresh_for_unknown_kid`) — but at
  most once per `min_refresh_seconds`, so a flood of tokens with made-up kids cannot make us
  hammer the identity provider (each of those still gets a 401).

A failed refresh keeps the keys we have: an identity provider hiccup must not log everyone
out. Fetches use httpx with a timeout; concurrent refreshes share one fetch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final

import httpx
import jwt
import trio

from chatd.auth.tokens import KeySet, fetch_jwks

log = logging.getLogger(__name__)

DEFAULT_CACHE_SECONDS: Final = 300.0
DEFAULT_MIN_REFRESH_SECONDS: Final = 10.0
DEFAULT_TIMEOUT: Final = 5.0


def _parse(response: httpx.Response) -> KeySet:
    response.raise_for_status()
    return KeySet.from_jwks(response.json())


class JwksKeys:
    """The current `KeySet` of a JWKS URL; `fetches` counts download attempts."""

    def __init__(
        self,
        url: str,
        *,
        cache_seconds: float = DEFAULT_CACHE_SECONDS,
        min_refresh_seconds: float = DEFAULT_MIN_REFRESH_SECONDS,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.cache_seconds = cache_seconds
        self.min_refresh_seconds = min_refresh_seconds
        self.timeout = timeout
        self._transport = transport
        self._clock = clock
        self.keys = KeySet({})
        self._last_unknown_kid = -float("inf")  # the rate limit counts only these
        self._lock = trio.Lock()
        self.fetches = 0

    def load(self) -> None:
        """Fetch the keys, blocking (start-up, before the port opens).

        Raises `KeyFileError` naming the URL when they cannot be had.
        """
        self.fetches += 1
        self.keys = fetch_jwks(self.url, timeout=self.timeout)

    async def refresh(self) -> bool:
        """Fetch the keys now; True if new keys were installed, False if the fetch failed
        (the old keys stay)."""
        seen = self.fetches
        async with self._lock:
            if self.fetches != seen:
                return True  # another task fetched while we waited: use its result
            self.fetches += 1
            try:
                with trio.fail_after(self.timeout):  # the whole fetch, not each phase
                    async with httpx.AsyncClient(
                        timeout=self.timeout, transport=self._transport
                    ) as client:
                        keys = _parse(await client.get(self.url))
            except (httpx.HTTPError, ValueError, jwt.PyJWKError, trio.TooSlowError) as exc:
                log.warning(
                    "JWKS refresh from %s failed (keeping %d known keys): %s",
                    self.url,
                    len(self.keys),
                    exc,
                )
                return False
            added = sorted(set(keys.kids) - set(self.keys.kids))
            if added:
                log.info("JWKS from %s: new keys %s", self.url, ", ".join(added))
            self.keys = keys
            return True

    async def refresh_for_unknown_kid(self) -> bool:
        """Refresh unless one was attempted less than `min_refresh_seconds` ago; True if the
        keys may have changed (worth verifying again)."""
        now = self._clock()
        if now - self._last_unknown_kid < self.min_refresh_seconds:
            return False
        self._last_unknown_kid = now
        return await self.refresh()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Refresh every `cache_seconds` until cancelled."""
        task_status.started()
        while True:
            await trio.sleep(self.cache_seconds)
            await self.refresh()


__all__ = ["JwksKeys"]
