"""The demo page at ``/`` (``[server] demo_page``), its dev-only token endpoint, and the
vendored browser libraries (always served: SockJS's iframe page loads sockjs-client).

The page is plain HTML, CSS and JS (``static/``) plus @stomp/stompjs and sockjs-client
vendored by ``scripts/vendor-js``: nothing comes from a CDN or anywhere but this server. The
files are read once when the app is built and served from memory under a fixed list of
names, so no request path ever reaches the file system.

``POST /demo/token`` ``{email}`` -> ``{email, token, expiresIn}`` signs in as anyone, which is
only acceptable where the tokens are worthless elsewhere. So it exists only when the caller of
`demo_blueprint` passes a key: `chatd.auth.keys.demo_token_key` gives one only with the demo
page on AND the server verifying with the dev pair of its own data dir (no ``public_key_file``
or ``jwks_url``) -- never in a production config, which names its key source. It also needs
``Content-Type: application/json``, so a page from another origin cannot call it without a
CORS preflight, which this server never grants for ``/demo``.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

from cryptography.hazmat.primitives.asymmetric import rsa
from quart import Blueprint, Response

from chatd.auth.tokens import mint_token
from chatd.config import Config
from chatd.domain.errors import NotFound
from chatd.domain.rules import require_email
from chatd.http.context import json_object
from chatd.http.errors import json_response

#: Lifetime of a demo token: a working day, so a demo does not sign out under the presenter.
DEMO_TOKEN_TTL = 8 * 3600

_JS = "text/javascript; charset=utf-8"
VENDOR = "vendor/"
_TEXT = "text/plain; charset=utf-8"
#: Every file the page may load, by the name under ``/demo/static/``, with its content type.
ASSETS: dict[str, str] = {
    "index.html": "text/html; charset=utf-8",
    "demo.css": "text/css; charset=utf-8",
    "demo.js": _JS,
    "demo-common.js": _JS,
    "demo-sessions.js": _JS,
    "demo-chat.js": _JS,
    "demo-e2e.js": _JS,
    "vendor/stomp.umd.min.js": _JS,
    "vendor/sockjs.min.js": _JS,
    "vendor/LICENSE.stompjs": _TEXT,
    "vendor/LICENSE.sockjs-client": _TEXT,
    "vendor/VERSIONS": _TEXT,
}

# The page talks to its own origin only (REST, WebSocket, SockJS's XHR/EventSource).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str


def load_assets() -> dict[str, Asset]:
    """Every file of `ASSETS`, read from the installed package; raises OSError if one is
    missing (a broken install should fail at start, not on the first visitor)."""
    root = resources.files("chatd.http") / "static"
    found: dict[str, Asset] = {}
    for name, content_type in ASSETS.items():
        node = root
        for part in name.split("/"):
            node = node / part
        found[name] = Asset(node.read_bytes(), content_type)
    return found


def _serve(asset: Asset) -> Response:
    response = Response(asset.body, content_type=asset.content_type)
    # Served from memory and small: always revalidate, so an upgraded server is seen at once.
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    return response


def demo_blueprint(config: Config, token_key: rsa.RSAPrivateKey | None) -> Blueprint:
    """With ``server.demo_page``: ``/`` and every file of `ASSETS` under ``/demo/static/``,
    and ``/demo/token`` when `token_key` is given (see the module docstring for when that may
    be). Without it: only the vendored libraries (``/demo/static/vendor/...``), because
    SockJS's iframe page loads sockjs-client from there whether or not the demo is on."""
    bp = Blueprint("demo", __name__)
    page = config.server.demo_page
    assets = {
        name: asset for name, asset in load_assets().items() if page or name.startswith(VENDOR)
    }

    if page:

        @bp.get("/")
        async def index() -> Response:
            return _serve(assets["index.html"])

    @bp.get("/demo/static/<path:name>")
    async def asset(name: str) -> Response:
        found = assets.get(name)
        if found is None:
            raise NotFound(f"no demo file {name!r}")
        return _serve(found)

    if page and token_key is not None:
        auth = config.auth

        @bp.post("/demo/token")
        async def token() -> Response:
            body = await json_object()
            email = require_email(body.get("email"), "email")
            minted = mint_token(
                token_key, email, DEMO_TOKEN_TTL, issuer=auth.issuer, audience=auth.audience
            )
            response = json_response({"email": email, "token": minted, "expiresIn": DEMO_TOKEN_TTL})
            response.headers["Cache-Control"] = "no-store"
            return response

    return bp


__all__ = ["ASSETS", "DEMO_TOKEN_TTL", "demo_blueprint", "load_assets"]
