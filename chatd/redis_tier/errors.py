"""The one error of the Redis tier: callers catch it and fall back to local knowledge."""

from __future__ import annotations

from typing import Final

from chatd.domain.errors import Unavailable

#: Seconds a caller that cannot fall back is told to wait.
RETRY_AFTER: Final = 0.5


class RedisUnavailable(Unavailable):
    """Redis did not answer (or the tier is down): the caller falls back to local knowledge."""

    def __init__(self, message: str = "redis unavailable") -> None:
        super().__init__(message, RETRY_AFTER)


__all__ = ["RedisUnavailable"]
