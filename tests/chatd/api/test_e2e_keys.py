"""REST: public keys (``/api/keys``) and end-to-end encrypted sessions.

Who may read keys (the owner, and users sharing a session with them) and what an encrypted
session accepts (only well-formed envelopes), each refusal with its reason.
"""

from __future__ import annotations

import base64
import json
import os
import uuid
from dataclasses import replace

import pytest

from chatd.domain.envelope import ALGORITHM
from chatd.domain.jwk import DEFAULT_MAX_PUBLIC_KEYS
from tests.chatd.api.conftest import ALICE, BOB, CAROL, UNKNOWN, assert_error, init_session, send
from tests.chatd.e2e_support import (
    b64u,
    encrypt,
    envelope,
    envelope_text,
    new_key,
    public_jwk,
    thumbprint,
)


async def publish(server, auth, caller, jwk, **extra):
    return await server.client.put(
        "/api/keys/me", json={"agreementKey": jwk, **extra}, headers=auth(caller)
    )


async def init_encrypted(server, auth, caller=ALICE, peer=BOB, intent="buy") -> str:
    answer = await server.client.post(
        "/api/chat/init",
        json={"toEmail": peer, "intent": intent, "encrypted": True},
        headers=auth(caller),
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["encrypted"] is True
    sid: str = answer.json()["sessionId"]
    return sid


# -- publishing ---------------------------------------------------------------------------------


async def test_publish_read_rotate_and_read_the_old_key_by_id(server, auth) -> None:
    first, signing = public_jwk(new_key()), public_jwk(new_key()) | {"key_ops": ["verify"]}
    answer = await publish(server, auth, ALICE, first, signingKey=signing, kid=thumbprint(first))
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert body["kid"] == thumbprint(first)
    assert body["email"] == ALICE
    assert body["current"]
    assert body["agreementKey"] == {k: first[k] for k in ("crv", "kty", "x", "y")}
    assert body["signingKey"]["x"] == signing["x"]
    assert body["retiredAt"] is None
    again = await publish(server, auth, ALICE, first, signingKey=signing)
    assert again.status_code == 200
    assert again.json() == body
    assert (await server.client.get("/api/keys/me", headers=auth(ALICE))).json() == body
    assert (await server.client.get(f"/api/keys/{ALICE}", headers=auth(ALICE))).json() == body

    second = public_jwk(new_key())
    assert (await publish(server, auth, ALICE, second)).status_code == 201
    current = (await server.client.get("/api/keys/me", headers=auth(ALICE))).json()
    assert current["kid"] == thumbprint(second)
    assert current["signingKey"] is None
    old = await server.client.get(f"/api/keys/{ALICE}/{thumbprint(first)}", headers=auth(ALICE))
    assert old.status_code == 200
    assert old.json()["current"] is False
    assert old.json()["retiredAt"] is not None
    body = assert_error(await publish(server, auth, ALICE, first), 409)
    assert "generate a new key" in body["errorMsg"]


def _jwk(**changes):
    value = public_jwk(new_key())
    for name, new in changes.items():
        if new is None:
            value.pop(name)
        else:
            value[name] = new
    return value


def _off_curve():
    value = public_jwk(new_key())
    y = bytearray(base64.urlsafe_b64decode(value["y"] + "="))
    y[-1] ^= 1
    return value | {"y": b64u(bytes(y))}


@pytest.mark.parametrize(
    ("jwk", "reason"),
    [
        ("not a key", "must be a JWK object"),
        (_jwk(d=b64u(os.urandom(32))), "private key material (d)"),
        (_jwk(crv="P-384"), "crv must be P-256"),
        (_jwk(kty="RSA"), "kty must be EC"),
        (_jwk(kty=None), "kty must be EC"),
        (_off_curve(), "not a point on P-256"),
        (_jwk(x=b64u(os.urandom(31))), "x must be 32 bytes"),
        (_jwk(y=None), "agreementKey.y must be unpadded base64url"),
        (_jwk(x=b64u(os.urandom(32)) + "="), "x must be unpadded base64url"),
        (_jwk(x="+" * 43), "x must be unpadded base64url"),
        (_jwk(n="AQAB"), "not public EC JWK members: n"),
        (_jwk(key_ops=["sign"]), "key_ops sign do not fit"),
        (_jwk(alg="ES256"), "alg must be one of ECDH-ES"),
        (_jwk(use="sig"), "use must be enc"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
async def test_bad_agreement_keys_are_refused_with_the_reason(
    sqlite_server, auth, jwk, reason
) -> None:
    body = assert_error(await publish(sqlite_server, auth, ALICE, jwk), 400)
    assert reason in body["errorMsg"]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({}, "agreementKey must be a JWK object"),
        ({"agreementKey": _jwk(), "extra": 1}, "unknown members: extra"),
        ({"agreementKey": _jwk(), "kid": "abc"}, "kid must be the RFC 7638 thumbprint"),
        (
            {"agreementKey": _jwk(), "signingKey": _jwk(d=b64u(os.urandom(32)))},
            "signingKey holds private key material",
        ),
        (
            {"agreementKey": _jwk(), "signingKey": _jwk(key_ops=["deriveBits"])},
            "do not fit a signing key",
        ),
    ],
)
async def test_bad_publications_are_refused(sqlite_server, auth, body, reason) -> None:
    answer = await sqlite_server.client.put("/api/keys/me", json=body, headers=auth(ALICE))
    assert reason in assert_error(answer, 400)["errorMsg"]


@pytest.fixture
def limits(limits):
    return replace(limits, max_public_keys=2)


async def test_a_user_may_publish_max_public_keys(sqlite_server, auth) -> None:
    assert DEFAULT_MAX_PUBLIC_KEYS > 2
    for _ in range(2):
        assert (await publish(sqlite_server, auth, ALICE, _jwk())).status_code == 201
    assert (
        "limit" in assert_error(await publish(sqlite_server, auth, ALICE, _jwk()), 409)["errorMsg"]
    )


# -- who may read keys --------------------------------------------------------------------------


async def test_strangers_may_not_read_keys_and_learn_nothing(server, auth) -> None:
    jwk = public_jwk(new_key())
    await publish(server, auth, ALICE, jwk)
    await init_session(server, auth, ALICE, BOB)  # bob shares a session; carol does not
    for path in (
        f"/api/keys/{ALICE}",
        f"/api/keys/{ALICE}/{thumbprint(jwk)}",
        f"/api/keys/{ALICE}/no-such-kid",
        f"/api/keys/{UNKNOWN}",
        f"/api/keys/{BOB}",
    ):
        answer = await server.client.get(path, headers=auth(CAROL))
        assert "share a session" in assert_error(answer, 403)["errorMsg"], path
        assert jwk["x"] not in answer.text


async def test_a_peer_reads_keys_once_a_session_exists(server, auth) -> None:
    jwk = public_jwk(new_key())
    await publish(server, auth, ALICE, jwk)
    assert_error(await server.client.get(f"/api/keys/{ALICE}", headers=auth(BOB)), 403)
    await init_encrypted(server, auth, BOB, ALICE)  # "initiating": init first, then read
    answer = await server.client.get(f"/api/keys/{ALICE}", headers=auth(BOB))
    assert answer.status_code == 200
    assert answer.json()["agreementKey"]["x"] == jwk["x"]
    by_id = await server.client.get(f"/api/keys/{ALICE}/{thumbprint(jwk)}", headers=auth(BOB))
    assert by_id.json() == answer.json()
    assert (
        "not published"
        in assert_error(await server.client.get(f"/api/keys/{BOB}", headers=auth(ALICE)), 404)[
            "errorMsg"
        ]
    )
    assert_error(await server.client.get(f"/api/keys/{ALICE}/nope", headers=auth(BOB)), 404)
    assert_error(await server.client.get("/api/keys/not-an-email", headers=auth(BOB)), 400)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/api/keys/me"),
        ("GET", "/api/keys/me"),
        ("GET", f"/api/keys/{BOB}"),
        ("GET", f"/api/keys/{BOB}/kid"),
    ],
)
async def test_key_routes_need_a_token(sqlite_server, method, path) -> None:
    assert_error(await sqlite_server.client.request(method, path, json={}), 401)


# -- encrypted sessions -------------------------------------------------------------------------


async def test_encrypted_session_is_its_own_session_and_stores_envelopes_verbatim(
    server, auth
) -> None:
    plain = await init_session(server, auth)
    sid = await init_encrypted(server, auth)
    assert sid != plain
    assert sid == await init_encrypted(server, auth, BOB, ALICE)
    alice, bob = new_key(), new_key()
    text = encrypt(alice, bob.public_key(), sid, "meet at noon")
    answer = await send(server, auth, sid, text, "e1")
    assert answer.status_code == 201, answer.text
    assert answer.json()["content"] == text
    history = await server.client.get(f"/api/chat/{sid}/history", headers=auth(BOB))
    assert [m["content"] for m in history.json()] == [text]
    unread = await server.client.get(f"/api/chat/{sid}/unread", headers=auth(BOB))
    assert [m["content"] for m in unread.json()] == [text]
    seen = await server.client.post(f"/api/chat/{sid}/seen", json={"upToSeq": 1}, headers=auth(BOB))
    assert seen.json()["updated"] == 1
    listed = (await server.client.get("/api/chat/sessions", headers=auth(ALICE))).json()
    assert {s["sessionId"]: s["encrypted"] for s in listed["sessions"]} == {plain: False, sid: True}
    assert (await send(server, auth, sid, text, "e1")).status_code == 200  # idempotent repeat


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("hello in clear", "not JSON"),
        ("[1,2]", "must be a JSON object"),
        (envelope_text(ct=None), "envelope lacks ct"),
        (envelope_text(iv=None, salt=None), "envelope lacks salt, iv"),
        (envelope_text(extra="x"), "unknown members: extra"),
        (envelope_text(v=2), "v must be 1"),
        (envelope_text(v=True), "v must be 1"),
        (envelope_text(alg="A128GCM"), f"alg must be {ALGORITHM}"),
        (envelope_text(iv=b64u(os.urandom(16))), "iv must be 12 bytes"),
        (envelope_text(salt=b64u(os.urandom(8))), "salt must be 16 bytes"),
        (envelope_text(kid=b64u(os.urandom(16))), "kid must be 32 bytes"),
        (envelope_text(rkid=123), "rkid must be unpadded base64url"),
        (envelope_text(ct=b64u(os.urandom(16))), "tag and some ciphertext"),
        (envelope_text(ct=b64u(os.urandom(40)) + "=="), "ct must be unpadded base64url"),
        (envelope_text(ct="abc/"), "ct must be unpadded base64url"),
        (envelope_text(ct="AB"), "not canonical"),
        ('{"v":1,"v":1}', "repeated member"),
    ],
    ids=lambda v: v[:30] if isinstance(v, str) else "",
)
async def test_an_encrypted_session_refuses_anything_but_an_envelope(
    sqlite_server, auth, content, reason
) -> None:
    sid = await init_encrypted(sqlite_server, auth)
    answer = await send(sqlite_server, auth, sid, content, "bad")
    assert reason in assert_error(answer, 400)["errorMsg"]


async def test_an_envelope_as_an_object_is_refused(sqlite_server, auth) -> None:
    sid = await init_encrypted(sqlite_server, auth)
    answer = await sqlite_server.client.post(
        "/api/chat/message",
        json={"sessionId": sid, "content": envelope(), "clientMessageId": "obj"},
        headers=auth(ALICE),
    )
    assert "content must be a string" in assert_error(answer, 400)["errorMsg"]


async def test_ciphertext_size_follows_max_content_length(sqlite_server, auth) -> None:
    limit = sqlite_server.config.limits.max_content_length
    sid = await init_encrypted(sqlite_server, auth)
    fits = envelope_text(ct=b64u(os.urandom(limit + 16)))
    assert (await send(sqlite_server, auth, sid, fits, "big")).status_code == 201
    over = envelope_text(ct=b64u(os.urandom(limit + 17)))
    body = assert_error(await send(sqlite_server, auth, sid, over, "over"), 413)
    assert "ciphertext holds" in body["errorMsg"]
    huge = envelope_text(ct=b64u(os.urandom(3 * limit)))
    assert_error(await send(sqlite_server, auth, sid, huge, "huge"), 413)


async def test_plain_sessions_refuse_nothing_new(sqlite_server, auth) -> None:
    sid = await init_session(sqlite_server, auth)
    for i, text in enumerate(['{"v":1}', envelope_text(), "plain words", "{not json"]):
        assert (await send(sqlite_server, auth, sid, text, f"p{i}")).status_code == 201


@pytest.mark.parametrize("flag", ["yes", 1, "true", []])
async def test_init_encrypted_must_be_a_boolean(sqlite_server, auth, flag) -> None:
    answer = await sqlite_server.client.post(
        "/api/chat/init",
        json={"toEmail": BOB, "intent": "buy", "encrypted": flag},
        headers=auth(ALICE),
    )
    assert "encrypted must be true or false" in assert_error(answer, 400)["errorMsg"]


async def test_outsiders_of_an_encrypted_session_are_refused(sqlite_server, auth) -> None:
    sid = await init_encrypted(sqlite_server, auth)
    assert_error(await send(sqlite_server, auth, sid, envelope_text(), "x", caller=CAROL), 403)
    assert_error(await send(sqlite_server, auth, str(uuid.uuid4()), envelope_text(), "y"), 404)
    assert json.loads(envelope_text())["alg"] == ALGORITHM


async def test_batch_sends_follow_the_session_s_content_rule(sqlite_server, auth) -> None:
    sid = await init_encrypted(sqlite_server, auth)
    sealed = [envelope_text(), envelope_text()]
    answer = await sqlite_server.client.post(
        "/api/chat/messages",
        json={
            "sessionId": sid,
            "messages": [{"content": c, "clientMessageId": f"b{i}"} for i, c in enumerate(sealed)],
        },
        headers=auth(ALICE),
    )
    assert answer.status_code == 201, answer.text
    assert [r["message"]["content"] for r in answer.json()["results"]] == sealed
    mixed = await sqlite_server.client.post(
        "/api/chat/messages",
        json={
            "sessionId": sid,
            "messages": [
                {"content": envelope_text(), "clientMessageId": "c0"},
                {"content": "in clear", "clientMessageId": "c1"},
            ],
        },
        headers=auth(ALICE),
    )
    assert assert_error(mixed, 400)["errorMsg"].startswith("messages[1]: content of an encrypted")
    history = await sqlite_server.client.get(f"/api/chat/{sid}/history", headers=auth(BOB))
    assert len(history.json()) == 2  # all or nothing
