"""``/health/live`` and ``/health/ready`` ; no authentication.

Liveness only says the process answers HTTP. Readiness asks `Readiness`: 503 while starting,
while draining after SIGTERM, or when a dependency (the store) does not answer — the body is
the usual error shape plus ``checks``, so a load balancer log says which part failed.
"""

from __future__ import annotations

from quart import Blueprint, Response

from chatd.http.errors import error_response, json_response
from chatd.services.health import Readiness


def health_blueprint(readiness: Readiness) -> Blueprint:
    """The health routes bound to `readiness`."""
    bp = Blueprint("health", __name__, url_prefix="/health")

    @bp.get("/live")
    async def live() -> Response:
        return json_response({"status": "up"})

    @bp.get("/ready")
    async def ready() -> Response:
        ok, checks = await readiness.probe()
        if ok:
            return json_response({"status": "ready", "checks": checks})
        failing = ", ".join(f"{k}: {v}" for k, v in checks.items() if v != "up")
        return error_response(503, f"not ready ({failing})", checks=checks)

    return bp
