"""REST: participation on every session route, 401s, and the JSON error body everywhere."""

from __future__ import annotations

import json
import uuid

import pytest

from chatd.auth.keys import generate_private_key
from chatd.auth.tokens import mint_token
from chatd.domain.rules import max_body_size
from tests.chatd.api.conftest import ALICE, BOB, CAROL, assert_error, init_session, send

# Every session-scoped route: (method, path template, JSON body).
SESSION_ROUTES = [
    ("GET", "/api/chat/{sid}/history", None),
    ("GET", "/api/chat/history/{sid}", None),
    ("GET", "/api/chat/{sid}/unread", None),
    ("GET", "/api/chat/unread/{sid}/{caller}", None),
    ("GET", "/api/chat/{sid}/unread/count", None),
    ("POST", "/api/chat/{sid}/delivered", {"upToSeq": 1}),
    ("POST", "/api/chat/{sid}/seen", {"upToSeq": 1}),
    ("POST", "/api/chat/message", {"sessionId": "{sid}", "content": "x", "clientMessageId": "c"}),
]


def _request(server, auth, route, sid: str, caller: str):
    method, template, body = route
    path = template.format(sid=sid, caller=caller)
    if body is not None:
        body = {k: v.format(sid=sid) if isinstance(v, str) else v for k, v in body.items()}
    return server.client.request(method, path, json=body, headers=auth(caller))


@pytest.mark.parametrize("route", SESSION_ROUTES, ids=lambda r: f"{r[0]} {r[1]}")
async def test_every_session_route_refuses_outsiders(server, auth, route) -> None:
    sid = await init_session(server, auth)
    await send(server, auth, sid, "secret", "s1")
    answer = await _request(server, auth, route, sid, CAROL)
    assert_error(answer, 403)
    assert "secret" not in answer.text


@pytest.mark.parametrize("route", SESSION_ROUTES, ids=lambda r: f"{r[0]} {r[1]}")
@pytest.mark.parametrize(("sid", "status"), [(str(uuid.uuid4()), 404), ("not-a-uuid", 400)])
async def test_every_session_route_unknown_or_malformed_id(
    sqlite_server, auth, route, sid, status
) -> None:
    assert_error(await _request(sqlite_server, auth, route, sid, ALICE), status)


async def test_unread_alias_refuses_another_users_email(sqlite_server, auth) -> None:
    sid = await init_session(sqlite_server, auth)
    answer = await sqlite_server.client.get(f"/api/chat/unread/{sid}/{BOB}", headers=auth(ALICE))
    assert_error(answer, 403)


def _bad_headers(signing_key) -> list[tuple[str, dict[str, str]]]:
    other_key = generate_private_key()
    return [
        ("missing", {}),
        ("empty", {"Authorization": ""}),
        ("basic scheme", {"Authorization": "Basic YWxpY2U6cGFzcw=="}),
        ("bearer only", {"Authorization": "Bearer"}),
        ("garbage", {"Authorization": "Bearer not.a.jwt"}),
        ("expired", {"Authorization": "Bearer " + mint_token(signing_key, ALICE, ttl=-120)}),
        ("foreign key", {"Authorization": "Bearer " + mint_token(other_key, ALICE)}),
        ("sub not email", {"Authorization": "Bearer " + mint_token(signing_key, "alice")}),
    ]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/chat/init"),
        ("POST", "/api/chat/message"),
        ("GET", f"/api/chat/{uuid.uuid4()}/history"),
        ("GET", "/api/chat/unread"),
        ("GET", "/api/chat/sessions"),
        ("GET", "/api/no/such/route"),
    ],
)
async def test_401_for_missing_or_bad_tokens(sqlite_server, signing_key, method, path) -> None:
    for label, headers in _bad_headers(signing_key):
        answer = await sqlite_server.client.request(method, path, headers=headers, json={})
        body = assert_error(answer, 401)
        assert body["errorMsg"], label


async def test_expired_token_says_so(sqlite_server, signing_key) -> None:
    token = mint_token(signing_key, ALICE, ttl=-120)
    answer = await sqlite_server.client.get(
        "/api/chat/unread", headers={"Authorization": f"Bearer {token}"}
    )
    assert assert_error(answer, 401)["errorMsg"] == "token expired"


@pytest.mark.parametrize(
    ("content", "headers", "status"),
    [
        (b'{"toEmail": ', {"Content-Type": "application/json"}, 400),
        (b"\xff\xfe\x00", {"Content-Type": "application/json"}, 400),
        (b"[1, 2]", {"Content-Type": "application/json"}, 400),
        (b'"text"', {"Content-Type": "application/json"}, 400),
        (b"[" * 20_000, {"Content-Type": "application/json"}, 400),
        (b'{"toEmail": "bob@example.com", "intent": "x"}', {"Content-Type": "text/plain"}, 400),
        (b'{"toEmail": "bob@example.com", "intent": "x"}', {}, 400),
    ],
)
async def test_malformed_bodies(sqlite_server, auth, content, headers, status) -> None:
    answer = await sqlite_server.client.post(
        "/api/chat/init", content=content, headers=headers | auth(ALICE)
    )
    assert_error(answer, status)


async def test_body_over_the_limit_is_413(sqlite_server, auth) -> None:
    limit = max_body_size(sqlite_server.config.limits.max_content_length)
    content = b'{"content": "' + b"x" * limit + b'"}'
    answer = await sqlite_server.client.post(
        "/api/chat/message",
        content=content,
        headers={"Content-Type": "application/json"} | auth(ALICE),
    )
    assert assert_error(answer, 413)["errorMsg"].startswith("request body too large")

    async def chunks():  # no Content-Length: the limit applies while reading
        for _ in range(limit // 65536 + 2):
            yield b"x" * 65536

    streamed = await sqlite_server.client.post(
        "/api/chat/message",
        content=chunks(),
        headers={"Content-Type": "application/json"} | auth(ALICE),
    )
    assert_error(streamed, 413)


async def test_a_text_within_the_character_limit_fits_the_body_limit_however_escaped(
    sqlite_server, auth
) -> None:
    # 4000 emoji as json.dumps writes them by default (\\ud83d\\ude00: 12 bytes each) are 48 KB:
    # still one message within the 4000-character limit, so not a 413 for the body's size.
    limit = sqlite_server.config.limits.max_content_length
    sid = await init_session(sqlite_server, auth)
    headers = {"Content-Type": "application/json"} | auth(ALICE)
    for n, status in ((limit, 201), (limit + 1, 413)):
        body = json.dumps(
            {"sessionId": sid, "content": "\U0001f600" * n, "clientMessageId": f"emoji-{n}"}
        )
        assert len(body) > 12 * n
        answer = await sqlite_server.client.post("/api/chat/message", content=body, headers=headers)
        assert answer.status_code == status, answer.text
    # Over the limit: the length is what is refused, not the body's bytes.
    assert answer.json()["errorMsg"] == (
        f"content is {limit + 1} characters long; the limit is {limit}"
    )


async def test_framework_errors_are_json(sqlite_server, auth) -> None:
    assert_error(await sqlite_server.client.get("/api/chat/x/y/z/w", headers=auth(ALICE)), 404)
    assert_error(await sqlite_server.client.get("/nothing-here"), 404)
    wrong_method = await sqlite_server.client.get("/api/chat/init", headers=auth(ALICE))
    assert_error(wrong_method, 405)
    assert "POST" in wrong_method.headers["Allow"]
    assert_error(await sqlite_server.client.delete("/health/live"), 405)
