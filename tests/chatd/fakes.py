"""Fakes of the *external* services chatd talks to, each a small HTTP app on a real port.

`FakeHTTP` is a minimal HTTP/1.1 server (h11 over trio sockets, keep-alive) that hands each
request to a handler. On top of it:

- `FakeProfileService` checks every request's service token (RS256 signature with our
  service's public key, ``iss``/``sub``/``aud``/``kid``, lifetime <= 120 s) and answers
  profiles; it can be told to fail, to be slow, or not to know a user.
- `FakeIdentityProvider` serves a JWKS document that a test can rotate.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import h11
import jwt
import trio
from cryptography.hazmat.primitives.asymmetric import rsa

Answer = tuple[int, dict[str, Any] | None]
Handler = Callable[[str, str, dict[str, str]], Awaitable[Answer]]


class FakeHTTP:
    """Serves `handler(method, path, headers) -> (status, json body or None)`."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.url = ""

    async def run(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        task_status.started(self.url)
        await trio.serve_listeners(self._connection, listeners)

    async def _connection(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    conn.receive_data(data)
                    if not data:
                        return
                    continue
                if isinstance(event, h11.Request):
                    headers = {k.decode().lower(): v.decode() for k, v in event.headers}
                    status, body = await self.handler(
                        event.method.decode(), event.target.decode(), headers
                    )
                    payload = b"" if body is None else json.dumps(body).encode()
                    response_headers = [
                        ("content-type", "application/json"),
                        ("content-length", str(len(payload))),
                    ]
                    await stream.send_all(
                        conn.send(h11.Response(status_code=status, headers=response_headers)) or b""
                    )
                    await stream.send_all(conn.send(h11.Data(data=payload)) or b"")
                    await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
                elif isinstance(event, h11.EndOfMessage | h11.Data):
                    continue
                elif isinstance(event, h11.ConnectionClosed):
                    return
                if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                    conn.start_next_cycle()
                elif conn.our_state is h11.MUST_CLOSE:
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError):
            return
        finally:
            await stream.aclose()


@dataclass
class FakeProfileService:
    """The profile service: ``GET /internal/chat-service/users/{email}/profile/{intent}``.

    `users` maps email -> display name (unknown emails answer 404); `status` forces an answer
    code (e.g. 503); `delay` makes every answer slow. `calls` lists the (email, intent) asked,
    `tokens` the bearer tokens seen; `refused` the reasons tokens were refused (401).
    """

    service_key: rsa.RSAPublicKey
    issuer: str = "chat-service"
    audience: str = "profile-service"
    kid: str | None = "chat-service-1"
    users: dict[str, str] = field(default_factory=dict)
    status: int | None = None
    delay: float = 0.0
    calls: list[tuple[str, str]] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0  # the most look-ups answered at once
    http: FakeHTTP | None = None

    async def run(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        self.http = FakeHTTP(self.handle)
        await self.http.run(task_status=task_status)

    @property
    def url(self) -> str:
        assert self.http is not None
        return self.http.url

    def check_token(self, header: str | None) -> str | None:
        """Why the service token is refused, or None if it is good."""
        if not header or not header.startswith("Bearer "):
            return "no bearer token"
        token = header.removeprefix("Bearer ")
        try:
            if jwt.get_unverified_header(token).get("kid") != self.kid:
                return "wrong kid"
            claims = jwt.decode(
                token,
                self.service_key,
                algorithms=["RS256"],
                audience=self.audience,
                issuer=self.issuer,
                options={"require": ["exp", "iat", "sub", "iss", "aud"]},
            )
        except jwt.PyJWTError as exc:
            return f"invalid token: {exc}"
        if claims["sub"] != self.audience:
            return "wrong sub"
        if claims["exp"] - claims["iat"] > 120:
            return "lifetime over 120 s"
        self.tokens.append(token)
        return None

    async def handle(self, method: str, path: str, headers: dict[str, str]) -> Answer:
        parts = path.split("/")
        # ['', 'internal', 'chat-service', 'users', EMAIL, 'profile', INTENT]
        if (
            method != "GET"
            or len(parts) != 7
            or parts[1:4] != ["internal", "chat-service", "users"]
            or parts[5] != "profile"
        ):
            return 404, {"error": "no route"}
        problem = self.check_token(headers.get("authorization"))
        if problem is not None:
            self.refused.append(problem)
            return 401, {"error": problem}
        email, intent = unquote(parts[4]), unquote(parts[6])
        self.calls.append((email, intent))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.delay:
                await trio.sleep(self.delay)
        finally:
            self.in_flight -= 1
        if self.status is not None:
            return self.status, {"error": "told to fail"}
        if email not in self.users:
            return 404, {"error": "no such user"}
        return 200, {"id": f"{intent}:{email}", "displayName": self.users[email]}


@dataclass
class FakeIdentityProvider:
    """Serves ``/jwks.json`` with the public keys in `keys` (kid -> key); `fetches` counts."""

    keys: dict[str, rsa.RSAPublicKey] = field(default_factory=dict)
    fetches: int = 0
    http: FakeHTTP | None = None

    async def run(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        self.http = FakeHTTP(self.handle)
        await self.http.run(task_status=task_status)

    @property
    def jwks_url(self) -> str:
        assert self.http is not None
        return self.http.url + "/jwks.json"

    async def handle(self, method: str, path: str, headers: dict[str, str]) -> Answer:
        if path != "/jwks.json":
            return 404, None
        self.fetches += 1
        entries = [
            {
                **json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key)),
                "kid": kid,
                "use": "sig",
                "alg": "RS256",
            }
            for kid, key in self.keys.items()
        ]
        return 200, {"keys": entries}
