"""Per-request helpers: who the caller is, and the JSON object a request carries.

The caller is established once, before any ``/api`` route runs, from the bearer token alone
(docs/architecture.md, Identity and authentication): routes read `caller()` and never an email
from the body. Doing it before routing also means an unauthenticated client learns nothing, not
even which ``/api`` paths exist.
"""

from __future__ import annotations

import json
from typing import Any

from quart import g, request

from chatd.auth.tokens import TokenVerifier, bearer_token
from chatd.domain.errors import BadRequest

API_PREFIX = "/api/"


async def authenticate(verifier: TokenVerifier) -> None:
    """Verify the bearer token of an ``/api`` request and remember the caller's email.

    Raises `Unauthenticated` (401) for a missing, malformed, expired or foreign token.
    """
    if request.path.startswith(API_PREFIX) or request.path == API_PREFIX.rstrip("/"):
        token = bearer_token(request.headers.get("Authorization"))
        g.caller = (await verifier.authenticate(token)).email


def caller() -> str:
    """The authenticated caller's email (set by `authenticate`)."""
    email: str = g.caller
    return email


async def json_object() -> dict[str, Any]:
    """The request body as a JSON object.

    Raises `BadRequest` for another content type, malformed JSON or a non-object body, and
    werkzeug's `RequestEntityTooLarge` (413) above the configured body size.
    """
    if request.mimetype != "application/json":
        raise BadRequest("Content-Type must be application/json")
    raw = await request.get_data(as_text=False)
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
        raise BadRequest("malformed JSON body") from None
    if not isinstance(data, dict):
        raise BadRequest("JSON body must be an object")
    return data
