"""``/metrics`` (Prometheus text), request ids and the access log.

Every HTTP answer carries ``X-Request-ID``: the caller's own when it sent a sane one (so a
trace spans the load balancer and us), a fresh one otherwise. The id is put in the logging
context for the request's lifetime, so every line logged while serving it names it, and one
access-log line per request says method, path (never the query string: browsers put
``access_token`` there), status and duration. Probe and scrape requests log at DEBUG: a load
balancer polling every second would drown everything else.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
import uuid

from quart import Blueprint, Quart, Response, g, request

from chatd.http.context import API_PREFIX
from chatd.observability.logs import request_id
from chatd.observability.metrics import CONTENT_TYPE, Metrics
from chatd.observability.tracing import TRACEPARENT, Tracer

access_log = logging.getLogger("chatd.access")

REQUEST_ID_HEADER = "X-Request-ID"
_SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
QUIET_PREFIXES = ("/health/", "/metrics")


def request_id_from(given: str) -> str:
    """`given` when it is a sane id (1-128 of ``A-Za-z0-9._:-``), else a fresh one."""
    return given if _SANE_ID.fullmatch(given) else uuid.uuid4().hex


def observe_blueprint(metrics: Metrics) -> Blueprint:
    """The ``/metrics`` route for `metrics` (no authentication, like the health probes)."""
    bp = Blueprint("observe", __name__)

    @bp.get("/metrics")
    async def scrape() -> Response:
        await metrics.refresh()
        return Response(metrics.render(), status=200, content_type=CONTENT_TYPE)

    return bp


def install_request_tracking(app: Quart, metrics: Metrics, *, access_log_on: bool = True) -> None:
    """Request ids, the access log (unless `access_log_on` is False) and the HTTP request
    counter on `app`.

    Call before any other ``before_request`` hook (authentication), so that a refused request
    still gets its id and its access-log line.
    """

    @app.before_request
    async def _start() -> None:
        rid = request_id_from(request.headers.get(REQUEST_ID_HEADER, ""))
        g.request_id = rid
        g.started = time.perf_counter()
        g.request_id_token = request_id.set(rid)

    @app.after_request
    async def _finish(response: Response) -> Response:
        rid = g.get("request_id") or uuid.uuid4().hex
        response.headers[REQUEST_ID_HEADER] = rid
        status = response.status_code
        metrics.http_requests.labels(request.method, str(status)).inc()
        token = g.get("request_id_token")
        if token is not None:
            g.request_id_token = None
            # Finished in another context than it started: nothing to undo then.
            with contextlib.suppress(ValueError):
                request_id.reset(token)
        if not access_log_on:
            return response
        elapsed = time.perf_counter() - g.get("started", time.perf_counter())
        quiet = request.path.startswith(QUIET_PREFIXES) and status < 500
        client = request.scope.get("client")
        fields = {
            "request_id": rid,
            "method": request.method,
            "path": request.path,
            "status": status,
            "duration_ms": round(elapsed * 1000, 3),
            "remote": client[0] if client else None,
        }
        user = g.get("caller")
        if user is not None:
            fields["user"] = user
        access_log.log(
            logging.DEBUG if quiet else logging.INFO,
            "%s %s %d %.1f ms",
            request.method,
            request.path,
            status,
            elapsed * 1000,
            extra=fields,
        )
        return response


def install_request_tracing(app: Quart, tracer: Tracer) -> None:
    """A server span per ``/api`` request (named by method and route, never the raw path,
    which may hold an email), continuing the caller's ``traceparent`` header and current
    while the request is served: a send's trace context is its request's span.

    Call before `install_request_tracking`, so the span is current for the access-log line
    (after-request hooks run in reverse order) and a refused request still gets one.
    """

    @app.before_request
    async def _open_span() -> None:
        if not request.path.startswith(API_PREFIX):
            return
        route = request.url_rule.rule if request.url_rule is not None else None
        span = tracer.start(
            f"{request.method} {route}" if route else request.method,
            request.headers.get(TRACEPARENT),
            kind="server",
            attributes={"http.request.method": request.method, "http.route": route or ""},
        )
        active = tracer.activate(span)
        active.__enter__()
        g.trace = (span, active)

    def close(status: int | None) -> None:
        trace = g.pop("trace", None)
        if trace is None:
            return
        span, active = trace
        if status is not None:
            span.set("http.response.status_code", status)
            if status >= 500:
                span.fail(str(status))
        active.__exit__(None, None, None)
        span.end()

    @app.after_request
    async def _close_span(response: Response) -> Response:
        close(response.status_code)
        return response

    @app.teardown_request
    async def _close_unanswered(exc: BaseException | None) -> None:
        close(None)  # after_request never ran (an unhandled error): end the span anyway
