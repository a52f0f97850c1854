"""The Quart-Trio application factory: routes, auth, JSON errors, body limit, keep-alive fix.

Only `chatd.http` (and the supervisor's serve call) import Quart or Hypercorn; everything the
routes need arrives as arguments, so tests build the same app the server runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from quart_trio import QuartTrio

from chatd.auth.tokens import TokenVerifier
from chatd.config import Config
from chatd.domain.rules import batch_body_size, max_body_size
from chatd.http.bodies import with_body_limits
from chatd.http.chat_routes import BATCH_PATH, chat_blueprint
from chatd.http.context import authenticate
from chatd.http.errors import register_error_handlers
from chatd.http.health_routes import health_blueprint
from chatd.http.keepalive import ShieldFinalSend
from chatd.http.key_routes import keys_blueprint
from chatd.http.observe import install_request_tracing, install_request_tracking, observe_blueprint
from chatd.observability.metrics import Metrics
from chatd.observability.tracing import Tracer
from chatd.presence import PresenceService
from chatd.services.chat import ChatService
from chatd.services.health import Readiness
from chatd.services.keys import KeyService

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import rsa

    from stomp.trio import BrokerRuntime


def create_app(
    services: ChatService,
    verifier: TokenVerifier,
    config: Config,
    *,
    readiness: Readiness | None = None,
    runtime: BrokerRuntime | None = None,
    metrics: Metrics | None = None,
    demo_token_key: rsa.RSAPrivateKey | None = None,
    presence: PresenceService | None = None,
    tracer: Tracer | None = None,
) -> QuartTrio:
    """The chatd HTTP app. Without `readiness`, one that probes only the services' store;
    with a broker `runtime`, STOMP over WebSocket at ``/ws`` and ``/ws/websocket``, and over
    SockJS under ``/ws`` unless ``server.sockjs_enabled`` is off; with ``server.demo_page``,
    the demo page at ``/``, and ``POST /demo/token`` signing with `demo_token_key` if given
    (`chatd.auth.keys.demo_token_key` says when it may be). Without `metrics`, ``/metrics``
    exports a fresh set that sees the store and HTTP requests only. Without `presence`, one
    with no sessions to follow (``[presence]`` settings, everyone offline). With a `tracer`,
    every ``/api`` request is a span."""
    if readiness is None:
        readiness = Readiness()
        readiness.add_store(services.store)
        readiness.started = True
    if metrics is None:
        metrics = Metrics()
        metrics.attach_store(services.store)

    app = QuartTrio(__name__, static_folder=None)
    # A path with an empty segment (`/ws//xhr`) is none of ours: 404, as SockJS expects, not a
    # redirect to the path with the slashes merged. Set before any route is added.
    app.url_map.merge_slashes = False
    app.config["MAX_CONTENT_LENGTH"] = max_body_size(config.limits.max_content_length)
    # a batch send's body may hold `max_batch` messages; every other route keeps the limit above
    batch_limit = batch_body_size(config.limits.max_content_length, config.limits.max_batch)
    app.request_class = with_body_limits(app.request_class, {("POST", BATCH_PATH): batch_limit})
    # Our routes answer JSON in contract order; never let Quart re-sort or pretty-print.
    app.config["JSON_SORT_KEYS"] = False

    # First: a refused request still gets its span, its id and its access-log line.
    if tracer is not None:
        install_request_tracing(app, tracer)
    install_request_tracking(app, metrics, access_log_on=config.logging.access_log)

    @app.before_request
    async def _auth() -> None:
        await authenticate(verifier)

    if presence is None:
        p = config.presence
        presence = PresenceService(services.store, enabled=p.enabled, max_peers=p.max_peers)
    app.register_blueprint(chat_blueprint(services, presence))
    app.register_blueprint(keys_blueprint(KeyService.beside(services)))
    app.register_blueprint(health_blueprint(readiness))
    app.register_blueprint(observe_blueprint(metrics))
    if runtime is not None:
        from chatd.http.ws import ws_blueprint

        app.register_blueprint(
            ws_blueprint(
                runtime, metrics, one_frame_per_message=config.server.ws_one_frame_per_message
            )
        )
        if config.server.sockjs_enabled:
            from chatd.http.sockjs_routes import install_sockjs

            sockjs = install_sockjs(app, runtime, config.server)
            metrics.attach_sockjs(lambda: sockjs.sessions_open)
    from chatd.http.demo import demo_blueprint

    app.register_blueprint(demo_blueprint(config, demo_token_key))
    register_error_handlers(app)
    app.extensions["chatd"] = {"services": services, "readiness": readiness, "metrics": metrics}
    asgi: Any = app.asgi_app
    app.asgi_app = ShieldFinalSend(asgi)  # type: ignore[method-assign, assignment]
    return app
