"""The profile service client: ``GET {base}/internal/chat-service/users/{email}/profile/{intent}``.

The answer is ``{id, displayName}``. A 404 means the user does not exist (`NotFound`, init
answers 404); anything else that is not a well-formed profile — a 5xx, a timeout, a refused
connection, our service token refused, a malformed body — is `Unavailable` (503): the user may
well exist, we just cannot tell now. Callers see a clear message; operators get the detail in
the log.

httpx's AsyncClient runs on trio (through anyio). One client with a bounded connection pool
is shared by all requests; `aclose` releases it (the supervisor's profiles part does).
"""

from __future__ import annotations

import logging
from typing import Any, Final
from urllib.parse import quote

import httpx
import trio

from chatd.auth.service import ServiceTokens
from chatd.domain.errors import NotFound, Unavailable
from chatd.profiles.base import Profile

log = logging.getLogger(__name__)

PROFILE_PATH: Final = "/internal/chat-service/users/{email}/profile/{intent}"
DEFAULT_TIMEOUT: Final = 2.0
DEFAULT_MAX_CONNECTIONS: Final = 100
#: Seconds a caller is told to wait after the profile service failed (no breaker opinion).
DEFAULT_RETRY_AFTER: Final = 5.0
UNAVAILABLE_MESSAGE: Final = "profile service unavailable, try again later"


class RemoteProfileProvider:
    """A `ProfileProvider` over HTTP; no caching here (see `CachedProfiles`).

    `transport` lets tests plug an httpx transport; production uses the default one.
    """

    def __init__(
        self,
        base_url: str,
        tokens: ServiceTokens,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.tokens = tokens
        self.timeout = timeout
        limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        self._client = httpx.AsyncClient(timeout=timeout, limits=limits, transport=transport)
        #: Requests sent (for tests and metrics).
        self.requests = 0

    def url_for(self, email: str, intent: str) -> str:
        """The profile URL, with `email` and `intent` percent-encoded as path segments."""
        return profile_url(self.base_url, email, intent)

    async def lookup(self, email: str, intent: str) -> Profile:
        """The profile of `email` in `intent`.

        Raises `NotFound` on 404 and `Unavailable` (with a ``retry_after``) on anything else
        that is not a profile.
        """
        url = self.url_for(email, intent)
        self.requests += 1
        headers = {"Authorization": self.tokens.authorization(), "Accept": "application/json"}
        try:
            # httpx's timeout bounds each phase (connect, write, read, pool wait); this bounds
            # the whole exchange, which is what a caller waiting on init cares about.
            with trio.fail_after(self.timeout):
                response = await self._client.get(url, headers=headers)
        except (httpx.TimeoutException, trio.TooSlowError):
            log.warning("profile service: no answer within %g s for %s", self.timeout, url)
            raise Unavailable(f"{UNAVAILABLE_MESSAGE} (timed out)", DEFAULT_RETRY_AFTER) from None
        except httpx.HTTPError as exc:
            log.warning("profile service: %s failed: %r", url, exc)
            raise Unavailable(UNAVAILABLE_MESSAGE, DEFAULT_RETRY_AFTER) from None
        if response.status_code == 404:
            raise NotFound(f"user {email} does not exist")
        if response.status_code != 200:
            level = logging.ERROR if response.status_code in (401, 403) else logging.WARNING
            log.log(
                level,
                "profile service answered %d for %s: %.200s",
                response.status_code,
                url,
                response.text,
            )
            raise Unavailable(UNAVAILABLE_MESSAGE, DEFAULT_RETRY_AFTER)
        return _parse(response, url)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()


def profile_url(base_url: str, email: str, intent: str) -> str:
    """The profile URL under `base_url`, `email` and `intent` percent-encoded as segments."""
    path = PROFILE_PATH.format(email=quote(email, safe="@"), intent=quote(intent, safe=""))
    return base_url.rstrip("/") + path


def _parse(response: httpx.Response, url: str) -> Profile:
    try:
        data: Any = response.json()
    except ValueError:
        data = None
    if isinstance(data, dict):
        pid, name = data.get("id"), data.get("displayName")
        if (
            isinstance(pid, str | int)
            and not isinstance(pid, bool)
            and str(pid).strip()
            and isinstance(name, str)
        ):
            return Profile(id=str(pid).strip(), display_name=name)
    log.error("profile service: malformed profile from %s: %.200s", url, response.text)
    raise Unavailable(f"{UNAVAILABLE_MESSAGE} (malformed answer)", DEFAULT_RETRY_AFTER)


__all__ = ["PROFILE_PATH", "UNAVAILABLE_MESSAGE", "RemoteProfileProvider", "profile_url"]
