"""Framing edge cases over a raw TCP socket against `python -m stomp`.

Each test writes exact bytes and asserts on the exact frames (and the close) the broker sends
back. Server frames are parsed by the small independent parser below, not by our own codec, so
that a codec bug cannot hide itself.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from .conftest import FAST_HEARTBEAT, BrokerProcess

TIMEOUT = 5.0
MAX_BODY = 16 * 1024 * 1024  # the broker's documented default body limit
_UNESCAPES = {"\\n": "\n", "\\r": "\r", "\\c": ":", "\\\\": "\\"}


def _unescape(value: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(value):
        pair = value[i : i + 2]
        if pair in _UNESCAPES:
            out.append(_UNESCAPES[pair])
            i += 2
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


@dataclass(frozen=True)
class RawFrame:
    command: str
    headers: list[tuple[str, str]]
    body: bytes

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first occurrence of a header, which is the one STOMP says counts."""
        for key, value in self.headers:
            if key == name:
                return value
        return default

    def all(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]

    def __str__(self) -> str:
        head = "\n".join(f"{k}:{v}" for k, v in self.headers)
        return f"{self.command}\n{head}\n\n{self.body[:200]!r}"


class Closed(Exception):
    """The broker closed the connection."""


class RawClient:
    """A STOMP peer that writes exactly the bytes a test gives it."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.create_connection(address, timeout=TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.heartbeats = 0
        self.eof = False
        #: STOMP 1.0 has no header escaping: a 1.0 session's headers are taken literally.
        self.escaping = True

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_bytewise(self, data: bytes) -> None:
        for i in range(len(data)):
            self.sock.sendall(data[i : i + 1])

    def connect(self, version: str = "1.2", heartbeat: str = "0,0") -> RawFrame:
        self.send(
            f"CONNECT\naccept-version:{version}\nhost:localhost\nheart-beat:{heartbeat}\n\n\x00".encode()
        )
        connected = self.expect("CONNECTED")
        self.escaping = connected.get("version", "1.0") != "1.0"
        return connected

    def _fill(self, deadline: float) -> None:
        if self.eof:
            raise Closed
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no complete frame; buffered {bytes(self.buf[:300])!r}")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(1 << 20)
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            raise Closed
        self.buf += data

    def read_frame(self, timeout: float = TIMEOUT) -> RawFrame:
        """The next frame; EOLs before it are counted as server heart-beats."""
        deadline = time.monotonic() + timeout
        while True:
            while self.buf[:1] == b"\n" or self.buf[:2] == b"\r\n":
                self.heartbeats += 1
                del self.buf[: 1 if self.buf[:1] == b"\n" else 2]
            end = self.buf.find(b"\n\n")
            crlf_end = self.buf.find(b"\r\n\r\n")
            if crlf_end != -1 and (end == -1 or crlf_end < end):
                head, body_start = bytes(self.buf[:crlf_end]), crlf_end + 4
            elif end != -1:
                head, body_start = bytes(self.buf[:end]), end + 2
            else:
                self._fill(deadline)
                continue
            lines = head.decode().split("\n")
            lines = [line.removesuffix("\r") for line in lines]
            command = lines[0]
            escaped = self.escaping and command != "CONNECTED"
            headers = []
            for line in lines[1:]:
                key, _, value = line.partition(":")
                headers.append((_unescape(key), _unescape(value)) if escaped else (key, value))
            length = next((int(v) for k, v in headers if k == "content-length"), None)
            if length is not None:
                if len(self.buf) < body_start + length + 1:
                    self._fill(deadline)
                    continue
                body = bytes(self.buf[body_start : body_start + length])
                assert self.buf[body_start + length] == 0, "content-length body not followed by NUL"
                del self.buf[: body_start + length + 1]
            else:
                nul = self.buf.find(b"\x00", body_start)
                if nul == -1:
                    self._fill(deadline)
                    continue
                body = bytes(self.buf[body_start:nul])
                del self.buf[: nul + 1]
            return RawFrame(command, headers, body)

    def expect(self, command: str, timeout: float = TIMEOUT) -> RawFrame:
        frame = self.read_frame(timeout)
        assert frame.command == command, f"expected {command}, got:\n{frame}"
        return frame

    def expect_error_then_close(self, timeout: float = TIMEOUT) -> RawFrame:
        """An ERROR frame with a `message` header, after which the broker closes the socket."""
        frame = self.expect("ERROR", timeout)
        assert frame.get("message"), f"ERROR without a message header:\n{frame}"
        self.expect_closed(timeout)
        return frame

    def expect_closed(self, timeout: float = TIMEOUT, allow: tuple[str, ...] = ()) -> None:
        """The broker closes the connection within `timeout`, sending no frame but `allow`."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                frame = self.read_frame(max(deadline - time.monotonic(), 0.001))
                if frame.command in allow:
                    continue
                pytest.fail(f"expected the broker to close the connection, got:\n{frame}")
        except Closed:
            return
        except TimeoutError:
            pytest.fail(f"the broker did not close the connection within {timeout}s")


@pytest.fixture
def raw(broker: BrokerProcess) -> Iterator[RawClient]:
    client = RawClient(broker.tcp)
    yield client
    client.close()


def _subscribe(client: RawClient, destination: str, sub_id: str = "s1", **extra: str) -> None:
    headers = "".join(f"{k}:{v}\n" for k, v in extra.items())
    client.send(
        f"SUBSCRIBE\nid:{sub_id}\ndestination:{destination}\n{headers}receipt:sub-{sub_id}\n\n\x00".encode()
    )
    receipt = client.expect("RECEIPT")
    assert receipt.get("receipt-id") == f"sub-{sub_id}"


def test_crlf_line_endings(raw: RawClient, unique: str) -> None:
    raw.send(b"CONNECT\r\naccept-version:1.2\r\nhost:localhost\r\n\r\n\x00")
    connected = raw.expect("CONNECTED")
    assert connected.get("version") == "1.2"
    destination = f"/queue/crlf-{unique}"
    raw.send(f"SUBSCRIBE\r\nid:0\r\ndestination:{destination}\r\nreceipt:r1\r\n\r\n\x00".encode())
    assert raw.expect("RECEIPT").get("receipt-id") == "r1"
    raw.send(
        f"SEND\r\ndestination:{destination}\r\nx-note:kept\r\n\r\nline one\r\nline two\x00".encode()
    )
    message = raw.expect("MESSAGE")
    assert message.body == b"line one\r\nline two"
    assert message.get("x-note") == "kept"  # no trailing \r left in a header value
    assert message.get("destination") == destination


def test_heartbeat_eols_between_frames(raw: RawClient, unique: str) -> None:
    raw.send(b"\n\r\n\n")
    raw.connect()
    destination = f"/queue/eols-{unique}"
    raw.send(b"\n\n\r\n")
    _subscribe(raw, destination)
    raw.send(f"\nSEND\ndestination:{destination}\n\nfirst\x00\n\r\n\n".encode())
    raw.send(f"SEND\ndestination:{destination}\n\nsecond\x00\r\n".encode())
    assert raw.expect("MESSAGE").body == b"first"
    assert raw.expect("MESSAGE").body == b"second"


def test_several_frames_in_one_write(raw: RawClient, unique: str) -> None:
    destination = f"/queue/batch-{unique}"
    data = b"CONNECT\naccept-version:1.2\nhost:localhost\n\n\x00"
    data += f"SUBSCRIBE\nid:0\ndestination:{destination}\nreceipt:sub\n\n\x00".encode()
    data += b"".join(f"SEND\ndestination:{destination}\n\nm{i}\x00".encode() for i in range(5))
    data += b"DISCONNECT\nreceipt:bye\n\n\x00"
    raw.send(data)
    raw.expect("CONNECTED")
    frames = []
    while not frames or frames[-1].command != "RECEIPT" or frames[-1].get("receipt-id") != "bye":
        frames.append(raw.read_frame())
    assert [f.command for f in frames[:1]] == ["RECEIPT"], [str(f) for f in frames]
    assert frames[0].get("receipt-id") == "sub"
    assert [f.body for f in frames if f.command == "MESSAGE"] == [
        f"m{i}".encode() for i in range(5)
    ]
    raw.expect_closed()


def test_frame_split_into_one_byte_writes(raw: RawClient, unique: str) -> None:
    destination = f"/queue/bytewise-{unique}"
    raw.send_bytewise(b"CONNECT\naccept-version:1.2\nhost:localhost\n\n\x00")
    raw.expect("CONNECTED")
    _subscribe(raw, destination)
    body = b"split \xe2\x9c\x93 across writes"
    raw.send_bytewise(
        f"SEND\ndestination:{destination}\ncontent-length:{len(body)}\nx-h:v\n\n".encode()
        + body
        + b"\x00"
    )
    message = raw.expect("MESSAGE")
    assert message.body == body
    assert message.get("x-h") == "v"


def test_content_length_body_with_nuls(raw: RawClient, unique: str) -> None:
    destination = f"/queue/nul-{unique}"
    raw.connect()
    _subscribe(raw, destination)
    body = b"\x00a\x00\x00b\x00"
    raw.send(
        f"SEND\ndestination:{destination}\ncontent-type:application/octet-stream\n"
        f"content-length:{len(body)}\nreceipt:sent\n\n".encode()
        + body
        + b"\x00"
    )
    frames = {f.command: f for f in (raw.read_frame(), raw.read_frame())}
    assert set(frames) == {"RECEIPT", "MESSAGE"}
    message = frames["MESSAGE"]
    assert message.body == body
    assert message.get("content-length") == str(len(body))
    assert message.get("content-type") == "application/octet-stream"


def test_repeated_headers_first_wins(raw: RawClient, unique: str) -> None:
    destination = f"/queue/repeat-{unique}"
    other = f"/queue/repeat-other-{unique}"
    raw.connect()
    _subscribe(raw, destination)
    _subscribe(raw, other, sub_id="s2")
    raw.send(
        f"SEND\ndestination:{destination}\ndestination:{other}\nfoo:first\nfoo:second\n\nbody\x00".encode()
    )
    message = raw.expect("MESSAGE")
    assert message.get("subscription") == "s1", f"delivered to the second destination:\n{message}"
    assert message.get("destination") == destination
    assert message.get("foo") == "first", f"first occurrence of foo is not 'first':\n{message}"
    raw.send(b"DISCONNECT\nreceipt:bye\n\n\x00")
    leftover = raw.read_frame()
    assert leftover.command == "RECEIPT", (
        f"message also delivered to the repeated destination:\n{leftover}"
    )


def test_unknown_command_is_an_error_then_close(raw: RawClient) -> None:
    raw.connect()
    raw.send(b"FROBNICATE\nx:y\n\n\x00")
    raw.expect_error_then_close()


def test_frame_before_connect_is_an_error(raw: RawClient, unique: str) -> None:
    raw.send(f"SEND\ndestination:/queue/early-{unique}\n\nhello\x00".encode())
    raw.expect_error_then_close()


@pytest.mark.parametrize("command", ["SEND", "SUBSCRIBE"])
def test_missing_destination_is_an_error(raw: RawClient, command: str) -> None:
    raw.connect()
    raw.send(f"{command}\nid:0\nreceipt:r-missing\n\n\x00".encode())
    error = raw.expect_error_then_close()
    # STOMP 1.2: an ERROR caused by a frame with a receipt header carries its receipt-id.
    assert error.get("receipt-id") == "r-missing", str(error)


def test_duplicate_subscription_id_is_an_error(raw: RawClient, unique: str) -> None:
    raw.connect()
    _subscribe(raw, f"/queue/dup-a-{unique}", sub_id="same")
    raw.send(f"SUBSCRIBE\nid:same\ndestination:/queue/dup-b-{unique}\n\n\x00".encode())
    raw.expect_error_then_close()


def test_ack_of_unknown_id_is_an_error(raw: RawClient) -> None:
    raw.connect()
    raw.send(b"ACK\nid:no-such-ack\n\n\x00")
    raw.expect_error_then_close()


def test_unsupported_version_lists_the_supported_ones(raw: RawClient) -> None:
    raw.send(b"CONNECT\naccept-version:2.0,3.1\nhost:localhost\n\n\x00")
    error = raw.expect_error_then_close()
    assert error.get("version") == "1.0,1.1,1.2", str(error)


def test_connect_without_accept_version_is_stomp_1_0(raw: RawClient, unique: str) -> None:
    raw.send(b"CONNECT\nlogin:\npasscode:\n\n\x00")
    connected = raw.expect("CONNECTED")
    assert connected.get("version", "1.0") == "1.0", str(connected)
    assert connected.get("heart-beat", "0,0") == "0,0", "STOMP 1.0 has no heart-beats"
    raw.escaping = False
    destination = f"/queue/v10-{unique}"
    # 1.0: SUBSCRIBE without id, then a body that ends at the first NUL.
    raw.send(f"SUBSCRIBE\ndestination:{destination}\nreceipt:s\n\n\x00".encode())
    assert raw.expect("RECEIPT").get("receipt-id") == "s"
    raw.send(f"SEND\ndestination:{destination}\n\nold school\x00".encode())
    message = raw.expect("MESSAGE")
    assert message.body == b"old school"
    assert message.get("destination") == destination


def test_oversized_frame_is_an_error_then_close(raw: RawClient, unique: str) -> None:
    raw.connect()
    size = MAX_BODY + 1024 * 1024
    head = f"SEND\ndestination:/queue/big-{unique}\ncontent-length:{size}\n\n".encode()

    def flood() -> None:
        # The broker may answer before it has read everything; keep writing until it hangs up.
        chunk = b"x" * (1 << 20)
        try:
            raw.sock.sendall(head)
            for _ in range(size // len(chunk)):
                raw.sock.sendall(chunk)
            raw.sock.sendall(b"\x00")
        except OSError:
            pass

    writer = threading.Thread(target=flood, daemon=True)
    writer.start()
    raw.expect_error_then_close(timeout=20)
    writer.join(timeout=20)


def test_oversized_frame_without_content_length(raw: RawClient, unique: str) -> None:
    raw.connect()

    def flood() -> None:
        chunk = b"y" * (1 << 20)
        try:
            raw.sock.sendall(f"SEND\ndestination:/queue/big2-{unique}\n\n".encode())
            for _ in range(MAX_BODY // len(chunk) + 2):
                raw.sock.sendall(chunk)
        except OSError:
            pass

    writer = threading.Thread(target=flood, daemon=True)
    writer.start()
    raw.expect_error_then_close(timeout=20)
    writer.join(timeout=20)


def test_too_many_headers_is_an_error_then_close(raw: RawClient, unique: str) -> None:
    raw.connect()
    headers = "".join(f"x-h{i}:{i}\n" for i in range(1000))
    raw.send(f"SEND\ndestination:/queue/hdrs-{unique}\n{headers}\nbody\x00".encode())
    raw.expect_error_then_close()


def test_overlong_header_line_is_an_error_then_close(raw: RawClient, unique: str) -> None:
    raw.connect()
    raw.send(f"SEND\ndestination:/queue/long-{unique}\nx-long:{'v' * 100_000}\n\nbody\x00".encode())
    raw.expect_error_then_close()


def test_nul_in_a_header_is_an_error_then_close_and_never_relayed(
    broker: BrokerProcess, raw: RawClient, unique: str
) -> None:
    destination = f"/topic/nul-header-{unique}"
    subscriber = RawClient(broker.tcp)
    try:
        subscriber.connect()
        _subscribe(subscriber, destination)
        raw.connect()
        forged = f"a\x00MESSAGE\ndestination:{destination}\nsubscription:s1\n\nforged"
        raw.send(f"SEND\ndestination:{destination}\nx-evil:{forged}\n\nreal\x00".encode())
        error = raw.expect_error_then_close()
        assert "NUL" in (error.get("message") or "") + error.body.decode()
        # Nothing reached the subscriber: a real frame sent afterwards is the next it sees.
        publisher = RawClient(broker.tcp)
        try:
            publisher.connect()
            publisher.send(f"SEND\ndestination:{destination}\n\nafter\x00".encode())
            message = subscriber.expect("MESSAGE")
            assert message.body == b"after"
        finally:
            publisher.close()
    finally:
        subscriber.close()


def test_disconnect_with_receipt_then_close(raw: RawClient) -> None:
    raw.connect()
    raw.send(b"DISCONNECT\nreceipt:77\n\n\x00")
    assert raw.expect("RECEIPT").get("receipt-id") == "77"
    raw.expect_closed()


def test_bytes_unread_at_the_close_do_not_reset_the_connection(raw: RawClient) -> None:
    # Heart-beat newlines can still be on their way when the broker ends a session. Closing a
    # socket with bytes unread makes the kernel reset the connection, and the client may lose
    # the RECEIPT (stompjs saw ECONNRESET at its DISCONNECT): the broker sends EOF and drains.
    raw.connect()
    raw.send(b"DISCONNECT\nreceipt:bye\n\n\x00" + b"\n" * (512 * 1024))
    raw.sock.settimeout(TIMEOUT)
    received = bytearray()
    while chunk := raw.sock.recv(1 << 16):  # a reset raises ConnectionResetError here
        received += chunk
    assert received.startswith(b"RECEIPT\nreceipt-id:bye\n")


def test_header_escaping_round_trip(raw: RawClient, unique: str) -> None:
    destination = f"/queue/escape-{unique}"
    raw.connect()
    _subscribe(raw, destination)
    raw.send(f"SEND\ndestination:{destination}\nx-odd\\cname:a\\cb\\nc\\\\d\\re\n\n\x00".encode())
    message = raw.expect("MESSAGE")
    assert message.get("x-odd:name") == "a:b\nc\\d\re", str(message)


def test_stomp_1_0_headers_are_not_unescaped(raw: RawClient, unique: str) -> None:
    destination = f"/queue/escape10-{unique}"
    raw.connect(version="1.0")
    _subscribe(raw, destination)
    raw.send(f"SEND\ndestination:{destination}\nx-raw:a\\cb:c\n\n\x00".encode())
    message = raw.expect("MESSAGE")
    assert message.get("x-raw") == "a\\cb:c", str(message)


def test_server_heartbeats_arrive(fast_heartbeat_broker: BrokerProcess) -> None:
    client = RawClient(fast_heartbeat_broker.tcp)
    try:
        client.connect(heartbeat="0,200")
        interval = max(FAST_HEARTBEAT[0], 200) / 1000
        quiet = 5 * interval
        with pytest.raises(TimeoutError):
            client.read_frame(timeout=quiet)
        # At least every interval, allowing for one late beat.
        assert client.heartbeats >= 3, f"{client.heartbeats} heart-beats in {quiet}s"
    finally:
        client.close()


def test_silent_client_is_disconnected(fast_heartbeat_broker: BrokerProcess) -> None:
    client = RawClient(fast_heartbeat_broker.tcp)
    try:
        connected = client.connect(heartbeat="200,0")
        server_expects = int((connected.get("heart-beat") or "0,0").split(",")[1])
        assert server_expects == max(200, FAST_HEARTBEAT[1])
        # Promised beats every 500 ms and sends none: the broker must give up on us soon.
        started = time.monotonic()
        client.expect_closed(timeout=6, allow=("ERROR",))
        assert time.monotonic() - started < 6
    finally:
        client.close()
