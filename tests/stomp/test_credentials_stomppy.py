"""`python -m stomp` with credentials, as stomp.py 9.0.0 sees it over TCP: the pairs given by
`--login/--passcode` and `--users FILE` connect (as that user), anything else gets an ERROR
"access refused" and the connection closed, on every STOMP version."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ..stomppy_loader import stomppy
from .conftest import BrokerProcess, start_broker, stop_broker
from .test_conformance_stomppy import TIMEOUT, VERSIONS, Client

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    users = Path(tmp_path_factory.mktemp("users")) / "users.txt"
    users.write_text("# who may connect\nalice:wonder:land\nbob:builder\n")
    running = start_broker("--login", "guest", "--passcode", "s3cret", "--users", str(users))
    try:
        yield running
    finally:
        stop_broker(running)


def connect(
    broker: BrokerProcess, version: str, login: str | None, passcode: str | None
) -> tuple[Client, list[Any]]:
    """Connect as `login`; returns the client and the CONNECTED frames it got (0 or 1)."""
    client = Client(version, broker.tcp)
    connected: list[Any] = []
    client.conn.set_listener("connected", _OnConnected(connected))
    client.conn.connect(login, passcode, wait=False)
    return client, connected


class _OnConnected(stomppy.ConnectionListener):
    def __init__(self, sink: list[Any]) -> None:
        self.sink = sink

    def on_connected(self, frame: Any) -> None:
        self.sink.append(frame)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    ("login", "passcode"), [("guest", "s3cret"), ("alice", "wonder:land"), ("bob", "builder")]
)
def test_known_users_connect_as_themselves(
    guarded: BrokerProcess, version: str, login: str, passcode: str, unique: str
) -> None:
    client, connected = connect(guarded, version, login, passcode)
    try:
        destination = f"/queue/creds-{unique}"
        client.conn.transport.wait_for_connection(TIMEOUT)
        assert client.conn.is_connected()
        [frame] = connected
        assert frame.headers["user-name"] == login
        client.subscribe(destination)
        client.send(destination, b"let in")
        assert client.seen.message().body == b"let in"
        assert client.seen.errors == []
    finally:
        client.close()


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    ("login", "passcode"),
    [
        ("guest", "wrong"),
        ("guest", None),
        (None, None),
        ("carol", "s3cret"),
        ("alice", "wonder"),
        ("bob", "builder "),
    ],
)
def test_wrong_or_missing_credentials_are_refused(
    guarded: BrokerProcess, version: str, login: str | None, passcode: str | None
) -> None:
    client, connected = connect(guarded, version, login, passcode)
    try:
        assert client.seen.disconnected.wait(TIMEOUT), "the broker kept the connection open"
        [error] = client.seen.errors
        assert error.headers["message"] == "access refused"
        assert connected == []
        assert not client.conn.is_connected()
    finally:
        client.drop()


def test_without_credentials_flags_anyone_connects(broker: BrokerProcess) -> None:
    client, connected = connect(broker, "1.2", "anyone", "anything")
    try:
        client.conn.transport.wait_for_connection(TIMEOUT)
        [frame] = connected
        assert "user-name" not in frame.headers  # open, and anonymous: login is not checked
        assert client.seen.errors == []
    finally:
        client.close()
