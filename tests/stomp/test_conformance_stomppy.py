"""Conformance with a real client: stomp.py 9.0.0 over TCP, for STOMP 1.0, 1.1 and 1.2.

Importing stomp.py: see tests/stomppy_loader.py (it cannot live in the project venv, whose
`stomp` is ours).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ..stomppy_loader import stomppy
from .conftest import FAST_HEARTBEAT, BrokerProcess

TIMEOUT = 10.0
VERSIONS = ["1.0", "1.1", "1.2"]

pytestmark = pytest.mark.timeout(90)

CONNECTIONS: dict[str, Callable[..., Any]] = {
    "1.0": stomppy.StompConnection10,
    "1.1": stomppy.StompConnection11,
    "1.2": stomppy.StompConnection12,
}


class Recorder(stomppy.ConnectionListener):
    """Collects what the client observed, for the test thread to wait on."""

    def __init__(self) -> None:
        self.messages: queue.Queue[Any] = queue.Queue()
        self.receipts: set[str] = set()
        self.errors: list[Any] = []
        self.heartbeats = 0
        self.heartbeat_timeouts = 0
        self.disconnected = threading.Event()
        self._cond = threading.Condition()

    def on_message(self, frame: Any) -> None:
        self.messages.put(frame)

    def on_receipt(self, frame: Any) -> None:
        with self._cond:
            self.receipts.add(frame.headers["receipt-id"])
            self._cond.notify_all()

    def on_error(self, frame: Any) -> None:
        self.errors.append(frame)

    def on_heartbeat(self) -> None:
        self.heartbeats += 1

    def on_heartbeat_timeout(self) -> None:
        self.heartbeat_timeouts += 1

    def on_disconnected(self) -> None:
        self.disconnected.set()

    def wait_receipt(self, receipt: str, timeout: float = TIMEOUT) -> None:
        with self._cond:
            ok = self._cond.wait_for(lambda: receipt in self.receipts, timeout)
        assert ok, f"no RECEIPT {receipt!r} within {timeout}s; errors: {self._errors()}"

    def message(self, timeout: float = TIMEOUT) -> Any:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no MESSAGE within {timeout}s; errors: {self._errors()}")

    def no_message(self, wait: float = 0.5) -> None:
        try:
            frame = self.messages.get(timeout=wait)
        except queue.Empty:
            return
        pytest.fail(f"unexpected MESSAGE {frame.headers} {frame.body[:100]!r}")

    def _errors(self) -> list[Any]:
        return [(e.headers, e.body) for e in self.errors]


class Client:
    """One stomp.py connection and what it observed."""

    def __init__(self, version: str, address: tuple[str, int], **options: Any) -> None:
        self.version = version
        self.conn = CONNECTIONS[version]([address], auto_decode=False, **options)
        self.seen = Recorder()
        self.conn.set_listener("recorder", self.seen)
        self._receipts = 0
        self._subs = 0

    def connect(self, **headers: Any) -> None:
        self.conn.connect(wait=True, headers=headers or None)
        assert self.conn.is_connected()

    def receipt_id(self) -> str:
        self._receipts += 1
        return f"r{self._receipts}"

    def subscribe(self, destination: str, ack: str = "auto", **headers: Any) -> str:
        """Subscribe and wait for the RECEIPT; returns the subscription id."""
        self._subs += 1
        sub_id = f"sub-{self._subs}"
        receipt = self.receipt_id()
        self.conn.subscribe(
            destination, id=sub_id, ack=ack, headers={"receipt": receipt, **headers}
        )
        self.seen.wait_receipt(receipt)
        return sub_id

    def send(
        self, destination: str, body: bytes | str, *, receipt: bool = False, **headers: Any
    ) -> None:
        extra = dict(headers)
        rid = None
        if receipt:
            rid = extra["receipt"] = self.receipt_id()
        self.conn.send(destination, body, headers=extra)
        if rid:
            self.seen.wait_receipt(rid)

    def ack(self, frame: Any, nack: bool = False, **kw: Any) -> None:
        headers = frame.headers
        if nack and self.version == "1.0":  # stomp.py's 1.0 protocol has no nack(): send 1.1's
            self.conn.send_frame("NACK", {"message-id": headers["message-id"], **kw})
            return
        method = self.conn.nack if nack else self.conn.ack
        if self.version == "1.2":
            method(headers["ack"], **kw)
        elif self.version == "1.1":
            method(headers["message-id"], headers["subscription"], **kw)
        else:
            method(headers["message-id"], **kw)

    def sync(self) -> None:
        """A round trip: everything sent before has been processed by the broker."""
        receipt = self.receipt_id()
        self.conn.send_frame("BEGIN", {"transaction": f"sync-{receipt}", "receipt": receipt})
        self.seen.wait_receipt(receipt)
        self.conn.send_frame("ABORT", {"transaction": f"sync-{receipt}"})

    def drop(self) -> None:
        """Close the TCP connection abruptly: no DISCONNECT, no ACK."""
        self.conn.transport.disconnect_socket()
        self.conn.transport.stop()

    def close(self) -> None:
        """DISCONNECT with a receipt (stomp.py waits for it), bounded so a bad broker can't hang us."""
        if self.conn.is_connected():
            closer = threading.Thread(
                target=self.conn.disconnect, kwargs={"receipt": self.receipt_id()}, daemon=True
            )
            closer.start()
            closer.join(TIMEOUT)
            assert not closer.is_alive(), "no RECEIPT for DISCONNECT"
        self.drop()


@pytest.fixture(params=VERSIONS)
def version(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def client_factory(broker: BrokerProcess) -> Iterator[Callable[..., Client]]:
    made: list[Client] = []

    def make(
        version: str,
        *,
        connect: bool = True,
        address: tuple[str, int] | None = None,
        **options: Any,
    ) -> Client:
        client = Client(version, address or broker.tcp, **options)
        made.append(client)
        if connect:
            client.connect()
        return client

    yield make
    for client in made:
        try:
            client.close()
        except Exception:  # already gone; the test decided whether that was right
            client.drop()


@pytest.fixture
def client(version: str, client_factory: Callable[..., Client]) -> Client:
    return client_factory(version)


def test_connect_negotiates_the_version(
    version: str, client_factory: Callable[..., Client]
) -> None:
    client = client_factory(version, connect=False)
    connected: list[Any] = []

    class OnConnected(stomppy.ConnectionListener):
        def on_connected(self, frame: Any) -> None:
            connected.append(frame)

    client.conn.set_listener("connected", OnConnected())
    client.connect()
    assert len(connected) == 1
    headers = connected[0].headers
    if version == "1.0":
        # stomp.py's 1.0 CONNECT says accept-version:1.0; a 1.0 CONNECTED may omit `version`.
        assert headers.get("version", "1.0") == "1.0"
    else:
        assert headers["version"] == version
        assert "heart-beat" in headers
    assert client.seen.errors == []


def test_subscribe_send_receive(client: Client, unique: str) -> None:
    destination = f"/queue/basic-{unique}"
    sub_id = client.subscribe(destination)
    client.send(destination, "hello \u2713", **{"x-custom": "yes"})
    frame = client.seen.message()
    assert frame.body == "hello \u2713".encode()
    assert frame.headers["destination"] == destination
    assert frame.headers["x-custom"] == "yes"
    assert frame.headers["message-id"]
    if client.version != "1.0":
        assert frame.headers["subscription"] == sub_id
    if client.version == "1.2":
        assert "ack" not in frame.headers  # auto ack: no ack header
    assert client.seen.errors == []


def test_topic_fan_out(version: str, client_factory: Callable[..., Client], unique: str) -> None:
    destination = f"/topic/fan-{unique}"
    a, b = client_factory(version), client_factory(version)
    a.subscribe(destination)
    b.subscribe(destination)
    a.send(destination, b"to everyone", receipt=True)
    assert a.seen.message().body == b"to everyone"
    assert b.seen.message().body == b"to everyone"


def test_receipt_on_send(client: Client, unique: str) -> None:
    client.send(f"/queue/receipt-{unique}", b"x", receipt=True)
    assert client.seen.errors == []


def test_transaction_commit_delivers(client: Client, unique: str) -> None:
    destination = f"/queue/tx-commit-{unique}"
    client.subscribe(destination)
    tx = client.conn.begin()
    client.send(destination, b"one", transaction=tx)
    client.send(destination, b"two", transaction=tx)
    client.sync()
    client.seen.no_message(0.3)
    client.conn.commit(tx)
    assert [client.seen.message().body for _ in range(2)] == [b"one", b"two"]
    assert client.seen.errors == []


def test_transaction_abort_discards(client: Client, unique: str) -> None:
    destination = f"/queue/tx-abort-{unique}"
    client.subscribe(destination)
    tx = client.conn.begin()
    client.send(destination, b"dropped", transaction=tx)
    client.conn.abort(tx)
    client.send(destination, b"after", receipt=True)
    assert client.seen.message().body == b"after"
    client.seen.no_message(0.3)
    assert client.seen.errors == []


def test_client_ack_is_cumulative(
    version: str, client_factory: Callable[..., Client], unique: str
) -> None:
    destination = f"/queue/ack-client-{unique}"
    consumer = client_factory(version)
    consumer.subscribe(destination, ack="client")
    for i in range(3):
        consumer.send(destination, f"m{i}")
    frames = [consumer.seen.message() for _ in range(3)]
    assert [f.body for f in frames] == [b"m0", b"m1", b"m2"]
    if version == "1.2":
        assert all(f.headers.get("ack") for f in frames)
    # Acking the second acks the first too (client mode); the third stays unacked.
    consumer.ack(frames[1])
    consumer.sync()
    consumer.close()
    assert consumer.seen.errors == []
    other = client_factory(version)
    other.subscribe(destination, ack="auto")
    assert other.seen.message().body == b"m2"
    other.seen.no_message(0.5)


@pytest.mark.parametrize("version", ["1.1", "1.2"])  # client-individual does not exist in STOMP 1.0
def test_client_individual_ack(
    version: str, client_factory: Callable[..., Client], unique: str
) -> None:
    destination = f"/queue/ack-individual-{unique}"
    consumer = client_factory(version)
    consumer.subscribe(destination, ack="client-individual")
    for i in range(3):
        consumer.send(destination, f"m{i}")
    frames = [consumer.seen.message() for _ in range(3)]
    consumer.ack(frames[1])  # only the second one
    consumer.sync()
    consumer.close()
    assert consumer.seen.errors == []
    other = client_factory(version)
    other.subscribe(destination)
    assert sorted(other.seen.message().body for _ in range(2)) == [b"m0", b"m2"]
    other.seen.no_message(0.5)


def test_ack_in_aborted_transaction_is_undone(
    version: str, client_factory: Callable[..., Client], unique: str
) -> None:
    destination = f"/queue/tx-ack-{unique}"
    consumer = client_factory(version)
    consumer.subscribe(destination, ack="client" if version == "1.0" else "client-individual")
    consumer.send(destination, b"keep me")
    frame = consumer.seen.message()
    tx = consumer.conn.begin()
    consumer.ack(frame, transaction=tx)
    consumer.conn.abort(tx)
    consumer.sync()
    consumer.close()
    assert consumer.seen.errors == []
    other = client_factory(version)
    other.subscribe(destination)
    assert other.seen.message().body == b"keep me"


def test_ack_in_committed_transaction(
    version: str, client_factory: Callable[..., Client], unique: str
) -> None:
    destination = f"/queue/tx-ack-commit-{unique}"
    consumer = client_factory(version)
    consumer.subscribe(destination, ack="client" if version == "1.0" else "client-individual")
    consumer.send(destination, b"gone")
    frame = consumer.seen.message()
    tx = consumer.conn.begin()
    consumer.ack(frame, transaction=tx)
    consumer.conn.commit(tx)
    consumer.sync()
    consumer.close()
    assert consumer.seen.errors == []
    other = client_factory(version)
    other.subscribe(destination)
    other.seen.no_message(0.5)


def test_unsubscribe_stops_delivery(client: Client, unique: str) -> None:
    destination = f"/topic/unsub-{unique}"
    sub_id = client.subscribe(destination)
    client.send(destination, b"before", receipt=True)
    assert client.seen.message().body == b"before"
    receipt = client.receipt_id()
    client.conn.unsubscribe(id=sub_id, headers={"receipt": receipt})
    client.seen.wait_receipt(receipt)
    client.send(destination, b"after", receipt=True)
    client.seen.no_message(0.3)
    assert client.seen.errors == []


def test_nack_redelivers(version: str, client_factory: Callable[..., Client], unique: str) -> None:
    """Also on STOMP 1.0, which has no NACK but whose clients send 1.1's (RabbitMQ takes it)."""
    destination = f"/queue/nack-{unique}"
    consumer = client_factory(version)
    # 1.0 has only auto and client acks.
    consumer.subscribe(destination, ack="client" if version == "1.0" else "client-individual")
    consumer.send(destination, b"retry me")
    first = consumer.seen.message()
    assert first.body == b"retry me"
    consumer.ack(first, nack=True)
    again = consumer.seen.message()
    assert again.body == b"retry me"
    consumer.ack(again)
    consumer.sync()
    consumer.seen.no_message(0.3)
    assert consumer.seen.errors == []


def test_queue_round_robin(
    version: str, client_factory: Callable[..., Client], unique: str
) -> None:
    destination = f"/queue/rr-{unique}"
    a, b = client_factory(version), client_factory(version)
    a.subscribe(destination)
    b.subscribe(destination)
    producer = client_factory(version)
    for i in range(10):
        producer.send(destination, f"m{i}")
    producer.sync()
    got_a = [a.seen.message().body for _ in range(5)]
    got_b = [b.seen.message().body for _ in range(5)]
    a.seen.no_message(0.2)
    b.seen.no_message(0.1)
    assert sorted(got_a + got_b) == sorted(f"m{i}".encode() for i in range(10))
    # Each consumer sees its share in publish order.
    assert got_a == sorted(got_a, key=lambda m: int(m[1:]))
    assert got_b == sorted(got_b, key=lambda m: int(m[1:]))


def test_unacked_messages_requeued_on_disconnect(
    version: str, client_factory: Callable[..., Client], unique: str
) -> None:
    destination = f"/queue/requeue-{unique}"
    consumer = client_factory(version)
    consumer.subscribe(destination, ack="client")
    for i in range(3):
        consumer.send(destination, f"m{i}")
    assert [consumer.seen.message().body for _ in range(3)] == [b"m0", b"m1", b"m2"]
    # Drop the TCP connection without DISCONNECT or ACK.
    consumer.drop()
    other = client_factory(version)
    other.subscribe(destination, ack="auto")
    assert [other.seen.message().body for _ in range(3)] == [b"m0", b"m1", b"m2"]
    other.seen.no_message(0.3)


def test_large_body_round_trip(client: Client, unique: str) -> None:
    destination = f"/queue/large-{unique}"
    client.subscribe(destination)
    pattern = bytes(range(256))
    body = pattern * (16 * 1024 * 1024 // len(pattern))
    assert len(body) == 16 * 1024 * 1024
    client.send(destination, body, receipt=True)
    frame = client.seen.message(timeout=30)
    assert len(frame.body) == len(body)
    assert frame.body == body
    assert client.seen.errors == []


def test_ten_thousand_messages_in_order(
    version: str, client_factory: Callable[..., Client], unique: str
) -> None:
    destination = f"/queue/many-{unique}"
    consumer = client_factory(version)
    consumer.subscribe(destination)
    producer = client_factory(version)
    count = 10_000
    for i in range(count):
        producer.send(destination, str(i))
    producer.sync()
    bodies = [consumer.seen.message().body for _ in range(count)]
    assert bodies == [str(i).encode() for i in range(count)]
    consumer.seen.no_message(0.2)
    assert producer.seen.errors == []
    assert consumer.seen.errors == []


ODD_VALUES = {
    "x-colon": "a:b:c",
    "x-newline": "line1\nline2",
    "x-backslash": "back\\slash",
    "x-all": "k:v\\n\n\\c:",
}


@pytest.mark.parametrize(
    "version", ["1.1", "1.2"]
)  # STOMP 1.0 has no header escaping; a newline cannot be carried
def test_header_escaping_round_trip(client: Client, unique: str) -> None:
    destination = f"/queue/escape-{unique}"
    client.subscribe(destination)
    client.send(destination, b"escaped", **ODD_VALUES)
    frame = client.seen.message()
    for name, value in ODD_VALUES.items():
        assert frame.headers.get(name) == value, (name, frame.headers)


def test_colon_in_header_value_on_1_0(client_factory: Callable[..., Client], unique: str) -> None:
    client = client_factory("1.0")
    destination = f"/queue/colon10-{unique}"
    client.subscribe(destination)
    client.send(destination, b"x", **{"x-colon": "a:b:c"})
    assert client.seen.message().headers["x-colon"] == "a:b:c"


@pytest.mark.parametrize("version", ["1.1", "1.2"])  # STOMP 1.0 has no heart-beats
def test_heartbeats_negotiated(
    version: str, fast_heartbeat_broker: BrokerProcess, client_factory: Callable[..., Client]
) -> None:
    client = client_factory(version, address=fast_heartbeat_broker.tcp, heartbeats=(200, 200))
    connected_hb = client.conn.heartbeats  # stomp.py stores the negotiated pair here
    # Client sends every max(200, server recv) and expects every max(200, server send).
    assert tuple(connected_hb) == (max(200, FAST_HEARTBEAT[1]), max(200, FAST_HEARTBEAT[0]))
    time.sleep(3)
    assert client.conn.is_connected(), "connection dropped during heart-beat-only silence"
    assert client.seen.heartbeat_timeouts == 0
    assert client.seen.heartbeats >= 3, f"only {client.seen.heartbeats} server heart-beats in 3s"
    assert not client.seen.disconnected.is_set()
    assert client.seen.errors == []
