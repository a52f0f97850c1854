"""Every 4xx/5xx answer as ``{uid, status, timestamp, errorMsg}``.

Domain errors map through `chatd.domain.errors.view`, the one table shared with STOMP;
Quart's and werkzeug's own errors (unknown route 404, 405, 413 body too large) get the same
JSON shape instead of their HTML pages. A 5xx is logged with its ``uid`` so an operator can
find the traceback a caller reports.
"""

from __future__ import annotations

import logging
import math
import uuid
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

from quart import Quart, Response, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound, RequestEntityTooLarge

from chatd.domain.errors import ChatError, view
from chatd.domain.models import compact_json, iso_utc

log = logging.getLogger(__name__)

JSON_MIMETYPE = "application/json"


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON answer with the keys in the order given (Quart's provider would sort them)."""
    body = compact_json(data)
    return Response(body, status=status, headers=headers, mimetype=JSON_MIMETYPE)


def error_response(
    status: int,
    message: str,
    *,
    headers: dict[str, str] | None = None,
    exc_info: BaseException | None = None,
    **extra: Any,
) -> Response:
    """The error body for `status`; `extra` keys are appended (readiness adds ``checks``)."""
    uid = str(uuid.uuid4())
    if status >= 500:
        level = logging.ERROR if exc_info is not None else logging.WARNING
        log.log(
            level,
            "answered %d uid=%s %s %s: %s",
            status,
            uid,
            request.method,
            request.path,
            message,
            exc_info=exc_info,
        )
    body = {
        "uid": uid,
        "status": HTTPStatus(status).name,
        "timestamp": iso_utc(datetime.now(UTC)),
        "errorMsg": message,
        **extra,
    }
    return json_response(body, status, headers)


def _chat_error(error: ChatError) -> Response:
    shown = view(error)
    headers = None
    if shown.retry_after is not None:
        # Retry-After takes whole seconds; rounding down could invite a retry that is refused.
        headers = {"Retry-After": str(max(1, math.ceil(shown.retry_after)))}
    return error_response(shown.status, shown.message, headers=headers)


def _http_error(error: HTTPException) -> Response:
    status = error.code or 500
    headers: dict[str, str] = {}
    if isinstance(error, NotFound):
        message = f"no route for {request.method} {request.path}"
    elif isinstance(error, MethodNotAllowed):
        allowed = sorted(error.valid_methods or [])
        message = f"method {request.method} not allowed on {request.path}"
        if allowed:
            headers["Allow"] = ", ".join(allowed)
    elif isinstance(error, RequestEntityTooLarge):
        limit = request.max_content_length
        message = "request body too large" + (f" (limit {limit} bytes)" if limit else "")
    else:
        message = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else ""
        message = message or "HTTP error"
    return error_response(status, message, headers=headers or None)


def _unexpected(error: Exception) -> Response:
    if isinstance(error, ChatError):  # reached here when raised outside a handled context
        return _chat_error(error)
    if isinstance(error, HTTPException):
        return _http_error(error)
    return error_response(500, view(error).message, exc_info=error)


def register_error_handlers(app: Quart) -> None:
    """Install the JSON error handlers on `app` (domain, HTTP and unexpected errors)."""
    app.register_error_handler(ChatError, _chat_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)
