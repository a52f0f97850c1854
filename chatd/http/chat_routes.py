"""``/api/chat/*``: thin adapters from HTTP to `ChatService` (docs/architecture.md, Wire contracts).

Each route only moves values between the request and the service and shapes the answer;
every rule (validation, participation, idempotency, rate limits) lives in the service so that
STOMP applies the same ones.
"""

from __future__ import annotations

from quart import Blueprint, Response, request

from chatd.domain.errors import Forbidden
from chatd.domain.models import ReceiptStatus, SessionSummary, batch_answers_json
from chatd.domain.presence import Presence
from chatd.domain.rules import normalize_email
from chatd.http.context import caller, json_object
from chatd.http.errors import json_response
from chatd.presence import PresenceService
from chatd.services.chat import ChatService
from chatd.services.inputs import parse_session_id


def _summary_json(
    entry: SessionSummary, me: str, presence: dict[str, Presence]
) -> dict[str, object]:
    last = entry.last_message
    session = entry.session.to_json()
    for participant in session["participants"]:
        # the peer's presence, when presence is on (never the caller's own)
        if participant["email"] != me and (known := presence.get(participant["email"])):
            participant["online"] = known.online
            participant["lastSeen"] = known.to_json()["lastSeen"]
    return {
        **session,
        "lastMessage": None if last is None else last.to_json(),
        "unreadCount": entry.unread,
    }


def _presence_json(presence: Presence) -> dict[str, object]:
    body = presence.to_json()
    del body["event"]
    return body


#: The batch send route: its body may be `limits.max_batch` messages (`batch_body_size`).
BATCH_PATH = "/api/chat/messages"


def chat_blueprint(service: ChatService, presence: PresenceService) -> Blueprint:
    """The ``/api/chat`` routes bound to `service` (and `presence` for who is online)."""
    bp = Blueprint("chat", __name__, url_prefix="/api/chat")

    @bp.post("/init")
    async def init() -> Response:
        body = await json_object()
        session = await service.init_session(
            caller(),
            body.get("toEmail"),
            body.get("intent"),
            body.get("fromEmail"),
            body.get("encrypted"),
        )
        await presence.introduce(*session.emails)  # new peers learn each other's presence
        return json_response(session.to_json())

    @bp.post("/message")
    async def send() -> Response:
        body = await json_object()
        message, created = await service.send(
            caller(), body.get("sessionId"), body.get("content"), body.get("clientMessageId")
        )
        return json_response(message.to_json(), 201 if created else 200)

    @bp.post("/messages")
    async def send_batch() -> Response:
        body = await json_object()
        answers = await service.send_batch(caller(), body.get("sessionId"), body.get("messages"))
        created = any(new for _, new in answers)
        return json_response({"results": batch_answers_json(answers)}, 201 if created else 200)

    @bp.get("/<session_id>/history")
    @bp.get("/history/<session_id>")
    async def history(session_id: str) -> Response:
        args = request.args
        messages = await service.history(
            caller(),
            session_id,
            limit=args.get("limit"),
            before=args.get("before"),
            after=args.get("after"),
        )
        return json_response([m.to_json() for m in messages])

    @bp.get("/<session_id>/unread")
    async def unread(session_id: str) -> Response:
        messages = await service.unread(caller(), session_id, limit=request.args.get("limit"))
        return json_response([m.to_json() for m in messages])

    @bp.get("/unread/<session_id>/<email>")
    async def unread_alias(session_id: str, email: str) -> Response:
        # Kept for old clients; the path email may only ever name the caller.
        if normalize_email(email) != caller():
            raise Forbidden("the email in the path must be the authenticated user")
        return await unread(session_id)

    @bp.get("/<session_id>/unread/count")
    async def unread_count(session_id: str) -> Response:
        count = await service.unread_count(caller(), session_id)
        return json_response({"sessionId": str(parse_session_id(session_id)), "count": count})

    @bp.get("/unread")
    async def unread_totals() -> Response:
        totals = await service.unread_totals(caller())
        return json_response(
            {
                "total": sum(count for _, count in totals),
                "sessions": [{"sessionId": str(sid), "count": count} for sid, count in totals],
            }
        )

    async def _mark(session_id: str, status: ReceiptStatus) -> Response:
        body = await json_object()
        update = await service.mark(
            caller(),
            session_id,
            status,
            up_to_seq=body.get("upToSeq"),
            message_ids=body.get("messageIds"),
        )
        return json_response(update.to_json())

    @bp.post("/<session_id>/delivered")
    async def delivered(session_id: str) -> Response:
        return await _mark(session_id, "delivered")

    @bp.post("/<session_id>/seen")
    async def seen(session_id: str) -> Response:
        return await _mark(session_id, "seen")

    @bp.get("/sessions")
    async def sessions() -> Response:
        args = request.args
        limit = args.get("limit")
        me = caller()
        entries = await service.sessions(me, limit=limit, cursor=args.get("cursor"))
        full_page = len(entries) == service.page_size(limit)
        online = await presence.of(
            [email for e in entries for email in e.session.emails if email != me]
        )
        return json_response(
            {
                "sessions": [_summary_json(e, me, online) for e in entries],
                "nextCursor": entries[-1].cursor if entries and full_page else None,
            }
        )

    @bp.get("/presence")
    async def presence_of() -> Response:
        # Peers only: an email that is not the caller's peer is left out, not refused, so
        # the answer never tells whether a stranger exists or is online.
        found = await presence.query(caller(), request.args.get("emails"))
        return json_response({"presence": [_presence_json(p) for p in found]})

    return bp
