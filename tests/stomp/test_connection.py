"""Connection state machine: version and heart-beat negotiation, validation, violations."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stomp import (
    Ack,
    Command,
    Connect,
    Frame,
    Nack,
    ServerConnection,
    State,
    Subscribe,
    Violation,
    encode_frame,
    negotiate_heartbeat,
)


def frame(command: str, body: bytes = b"", **headers: str) -> bytes:
    return encode_frame(
        Frame(Command(command), tuple((k.replace("_", "-"), v) for k, v in headers.items()), body)
    )


def connected(version: str = "1.2", heartbeat: str = "0,0") -> ServerConnection:
    conn = ServerConnection(heartbeat=(1000, 2000))
    [event] = conn.receive_data(
        frame("CONNECT", accept_version=version, host="h", heart_beat=heartbeat)
    )
    assert isinstance(event, Connect)
    return conn


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [
        ("1.2", "1.2"),
        ("1.0,1.1,1.2", "1.2"),
        ("1.1,1.0", "1.1"),
        ("1.0", "1.0"),
        (None, "1.0"),
        ("1.1, 2.0", "1.1"),
    ],
)
def test_version_negotiation(offered: str | None, chosen: str) -> None:
    conn = ServerConnection()
    headers = {"accept_version": offered} if offered else {}
    [event] = conn.receive_data(frame("CONNECT", **headers))
    assert isinstance(event, Connect)
    assert event.version == conn.version == chosen
    assert conn.state is State.CONNECTED


def test_unsupported_version_lists_supported() -> None:
    conn = ServerConnection()
    [event] = conn.receive_data(frame("CONNECT", accept_version="2.0,3.1"))
    assert isinstance(event, Violation)
    assert event.message == "unsupported STOMP version"
    assert ("version", "1.0,1.1,1.2") in event.headers
    assert conn.state is State.CLOSED


@pytest.mark.parametrize(
    ("client", "server", "expected"),
    [
        ((0, 0), (1000, 2000), (0, 0)),
        ((500, 3000), (1000, 2000), (3000, 2000)),
        ((5000, 100), (1000, 2000), (1000, 5000)),
        ((500, 0), (1000, 0), (0, 0)),
    ],
)
def test_heartbeat_negotiation(
    client: tuple[int, int], server: tuple[int, int], expected: tuple[int, int]
) -> None:
    assert negotiate_heartbeat(client, server) == expected


#: (client heart-beat in CONNECT, the server's limit) -> (server sends, server expects), ms.
#: The first rows are what RabbitMQ answers with its one-second limit.
RABBITMQ_LIKE = [
    ((1000, 1000), (1000, 1000), (1000, 1000)),
    ((10_000, 10_000), (1000, 1000), (10_000, 10_000)),
    ((500, 250), (1000, 1000), (1000, 1000)),
    ((0, 0), (1000, 1000), (0, 0)),
    ((4000, 0), (1000, 1000), (0, 4000)),
    ((0, 3000), (1000, 1000), (3000, 0)),
    ((1000, 1000), (10_000, 10_000), (10_000, 10_000)),
    ((1000, 1000), (0, 0), (0, 0)),
]


@pytest.mark.parametrize(("client", "server", "expected"), RABBITMQ_LIKE)
def test_heartbeat_honours_the_client_down_to_the_limit(
    client: tuple[int, int], server: tuple[int, int], expected: tuple[int, int]
) -> None:
    assert negotiate_heartbeat(client, server) == expected


_ms = st.integers(min_value=0, max_value=3_600_000)


@given(client=st.tuples(_ms, _ms), server=st.tuples(_ms, _ms))
def test_heartbeat_negotiation_properties(client: tuple[int, int], server: tuple[int, int]) -> None:
    send, expect = negotiate_heartbeat(client, server)
    client_sends, client_wants = client
    for got, asked, limit in ((send, client_wants, server[0]), (expect, client_sends, server[1])):
        if asked == 0 or limit == 0:
            assert got == 0  # either side off: no beats that way
        else:
            assert got == max(asked, limit)  # what was asked, never below the limit
    # The header we answer makes the client compute the same intervals (STOMP 1.2's rule
    # applied on its side to our CONNECTED).
    assert negotiate_heartbeat((send, expect), (client_sends, client_wants)) == (expect, send)


def test_default_limit_is_one_second() -> None:
    conn = ServerConnection()
    [event] = conn.receive_data(frame("CONNECT", accept_version="1.2", heart_beat="1000,1000"))
    assert isinstance(event, Connect)
    assert event.heartbeat == conn.heartbeat == (1000, 1000)


def test_connect_reports_negotiated_heartbeat() -> None:
    conn = connected(heartbeat="4000,500")
    assert conn.heartbeat == (1000, 4000)


def test_bad_heartbeat_header() -> None:
    [event] = ServerConnection().receive_data(
        frame("CONNECT", accept_version="1.2", heart_beat="x")
    )
    assert isinstance(event, Violation)
    assert event.message == "invalid heart-beat"


def test_frame_before_connect() -> None:
    conn = ServerConnection()
    [event] = conn.receive_data(frame("SEND", destination="/q"))
    assert isinstance(event, Violation)
    assert event.message == "not connected"


def test_second_connect_is_refused() -> None:
    conn = connected()
    [event] = conn.receive_data(frame("CONNECT", accept_version="1.2", receipt="r"))
    assert isinstance(event, Violation)
    assert event.receipt == "r"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (frame("SEND"), "missing header"),
        (frame("SUBSCRIBE", destination="/q"), "missing header"),
        (frame("SUBSCRIBE", id="1"), "missing header"),
        (frame("SUBSCRIBE", id="1", destination="/q", ack="sometimes"), "invalid ack mode"),
        (frame("UNSUBSCRIBE"), "missing header"),
        (frame("ACK", message_id="1"), "missing header"),
        (frame("BEGIN"), "missing header"),
        (frame("MESSAGE", destination="/q"), "unexpected frame"),
        (frame("SUBSCRIBE", b"body", id="1", destination="/q"), "unexpected body"),
    ],
)
def test_invalid_frames(data: bytes, message: str) -> None:
    conn = connected()
    [event] = conn.receive_data(data)
    assert isinstance(event, Violation)
    assert event.message == message
    assert conn.state is State.CLOSED
    assert conn.receive_data(frame("SEND", destination="/q")) == []


def test_events_before_a_violation_are_kept() -> None:
    conn = connected()
    events = conn.receive_data(frame("SUBSCRIBE", id="1", destination="/q") + b"BOGUS\n\n\0")
    assert isinstance(events[0], Subscribe)
    assert isinstance(events[1], Violation)
    assert events[1].message == "unknown command"


def test_ack_id_header_depends_on_version() -> None:
    [ack] = connected("1.2").receive_data(frame("ACK", id="7"))
    assert isinstance(ack, Ack)
    assert ack.id == "7"
    [ack] = connected("1.1").receive_data(frame("ACK", message_id="7", subscription="s"))
    assert isinstance(ack, Ack)
    assert ack.id == "7"
    [bad] = connected("1.1").receive_data(frame("ACK", message_id="7"))
    assert isinstance(bad, Violation)
    # STOMP 1.0 has no NACK, but 1.0 clients send 1.1's (RabbitMQ and ActiveMQ take it), by
    # message-id as 1.0's ACK.
    [nack] = connected("1.0").receive_data(frame("NACK", message_id="7"))
    assert isinstance(nack, Nack)
    assert nack.id == "7"
    [bad] = connected("1.0").receive_data(frame("NACK", id="7"))
    assert isinstance(bad, Violation)
    [nack] = connected("1.2").receive_data(frame("NACK", id="7", transaction="t"))
    assert isinstance(nack, Nack)
    assert nack.transaction == "t"


def test_stomp_10_has_no_escaping_and_optional_subscription_id() -> None:
    conn = connected("1.0")
    [sub] = conn.receive_data(b"SUBSCRIBE\ndestination:/q\\c1\n\n\0")
    assert isinstance(sub, Subscribe)
    assert sub.destination == sub.id == "/q\\c1"


def test_disconnect_closes() -> None:
    conn = connected()
    [event] = conn.receive_data(
        frame("DISCONNECT", receipt="bye") + frame("SEND", destination="/q")
    )
    assert event.receipt == "bye"
    assert conn.state is State.CLOSED
