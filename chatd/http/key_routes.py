"""``/api/keys/*``: public keys of end-to-end encrypted chats, thin adapters to `KeyService`.

``PUT /api/keys/me`` publishes the caller's keys (any authenticated user, for themselves
only); ``GET /api/keys/{email}`` and ``GET /api/keys/{email}/{kid}`` read the current or a
given key of a user the caller shares a session with (or the caller's own, ``me``). Who may
read what is `chatd.services.keys`' rule, so it has one home.
"""

from __future__ import annotations

from quart import Blueprint, Response

from chatd.http.context import caller, json_object
from chatd.http.errors import json_response
from chatd.services.keys import KeyService


def keys_blueprint(keys: KeyService) -> Blueprint:
    """The ``/api/keys`` routes bound to `keys`."""
    bp = Blueprint("keys", __name__, url_prefix="/api/keys")

    @bp.put("/me")
    async def publish() -> Response:
        key, changed = await keys.publish(caller(), await json_object())
        return json_response(key.to_json(), 201 if changed else 200)

    @bp.get("/<email>")
    async def current(email: str) -> Response:
        return json_response((await keys.current(caller(), email)).to_json())

    @bp.get("/<email>/<kid>")
    async def by_id(email: str, kid: str) -> Response:
        return json_response((await keys.by_id(caller(), email, kid)).to_json())

    return bp
