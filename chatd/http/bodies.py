"""Per-route request body limits.

Quart has one limit for every request (`MAX_CONTENT_LENGTH`), applied while the body arrives,
before any route runs: a route cannot raise it for itself later without racing the body.
A batch send may carry `limits.max_batch` messages, so its route needs a larger limit than
the rest, which keep the small one (a large body to any other route is refused as early as
before). The request class picks the limit when the request is built, from its method and
path.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from quart import Request

R = TypeVar("R", bound=Request)


def with_body_limits(base: type[R], limits: Mapping[tuple[str, str], int]) -> type[R]:
    """A subclass of `base` whose requests to one of `limits`' (method, path) get that body
    limit in bytes instead of the app's."""

    class LimitedRequest(base):  # type: ignore[valid-type, misc]
        def __init__(
            self,
            method: str,
            scheme: str,
            path: str,
            *args: Any,
            max_content_length: int | None = None,
            **kwargs: Any,
        ) -> None:
            limit = limits.get((method, path), max_content_length)
            super().__init__(method, scheme, path, *args, max_content_length=limit, **kwargs)
            if limit != max_content_length:
                self.max_content_length = limit  # what a 413 body reports

    return LimitedRequest
