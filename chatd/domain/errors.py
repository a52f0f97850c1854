"""Domain errors and the one table that maps them to HTTP and STOMP.

Services raise these; the HTTP layer turns them into `{uid, status, timestamp, errorMsg}` with
the status code below, the STOMP layer into `/user/queue/error` bodies or ERROR frames. Every
mapping lives here so the two surfaces can never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus


class ChatError(Exception):
    """Base of every error a caller may see; `message` is safe to show to that caller."""

    status: HTTPStatus = HTTPStatus.INTERNAL_SERVER_ERROR

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def code(self) -> str:
        """The status name used in error bodies, e.g. ``"BAD_REQUEST"``."""
        return self.status.name


class BadRequest(ChatError):
    status = HTTPStatus.BAD_REQUEST


class Unauthenticated(ChatError):
    status = HTTPStatus.UNAUTHORIZED


class Forbidden(ChatError):
    status = HTTPStatus.FORBIDDEN


class NotFound(ChatError):
    status = HTTPStatus.NOT_FOUND


class Conflict(ChatError):
    """The request contradicts what is stored (a retired public key published again)."""

    status = HTTPStatus.CONFLICT


class PayloadTooLarge(ChatError):
    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


class RateLimited(ChatError):
    status = HTTPStatus.TOO_MANY_REQUESTS

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(ChatError):
    """A dependency (store, profile service, bridge) is down: retry later.

    `retry_after` (seconds), when known, becomes the HTTP ``Retry-After`` header, e.g. the
    time until an open circuit breaker lets a request through again.
    """

    status = HTTPStatus.SERVICE_UNAVAILABLE

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class ErrorView:
    """What a caller is told about an error, on any surface."""

    status: int
    code: str
    message: str
    retry_after: float | None = None


def view(error: BaseException) -> ErrorView:
    """Map any exception to what the caller may see; unknown errors never leak details."""
    if isinstance(error, ChatError):
        retry = error.retry_after if isinstance(error, RateLimited | Unavailable) else None
        return ErrorView(int(error.status), error.code, error.message, retry)
    return ErrorView(500, HTTPStatus.INTERNAL_SERVER_ERROR.name, "internal error")
