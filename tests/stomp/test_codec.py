"""The frame codec: table-driven cases and hypothesis properties."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stomp import Command, Frame, FrameDecoder, RemoteProtocolError, encode_frame


def decode_all(data: bytes, **limits: int) -> list[Frame]:
    decoder = FrameDecoder(**limits)
    decoder.feed(data)
    frames = []
    while (frame := decoder.next_frame()) is not None:
        frames.append(frame)
    return frames


GOOD = [
    ("minimal", b"SEND\n\n\0", [Frame(Command.SEND)]),
    (
        "lf headers",
        b"SEND\ndestination:/q\n\nhi\0",
        [Frame(Command.SEND, (("destination", "/q"),), b"hi")],
    ),
    (
        "crlf",
        b"SEND\r\ndestination:/q\r\n\r\nhi\0",
        [Frame(Command.SEND, (("destination", "/q"),), b"hi")],
    ),
    (
        "heart-beats between frames",
        b"\n\r\n\nDISCONNECT\n\n\0\n\r\nDISCONNECT\n\n\0\n",
        [Frame(Command.DISCONNECT), Frame(Command.DISCONNECT)],
    ),
    (
        "escaped header",
        b"SEND\na\\cb:c\\nd\\\\e\\rf\n\n\0",
        [Frame(Command.SEND, (("a:b", "c\nd\\e\rf"),))],
    ),
    (
        "connect is not unescaped",
        b"CONNECT\nlogin:a\\cb\n\n\0",
        [Frame(Command.CONNECT, (("login", "a\\cb"),))],
    ),
    (
        "repeated headers kept in order",
        b"SEND\nx:1\nx:2\n\n\0",
        [Frame(Command.SEND, (("x", "1"), ("x", "2")))],
    ),
    ("value with colon", b"SEND\nx:a:b\n\n\0", [Frame(Command.SEND, (("x", "a:b"),))]),
    ("empty value", b"SEND\nx:\n\n\0", [Frame(Command.SEND, (("x", ""),))]),
    (
        "content-length body with NUL",
        b"SEND\ncontent-length:3\n\na\0b\0",
        [Frame(Command.SEND, (("content-length", "3"),), b"a\0b")],
    ),
    (
        "utf-8 header",
        "SEND\nnäme:välüe☃\n\n\0".encode(),
        [Frame(Command.SEND, (("näme", "välüe☃"),))],
    ),
    ("body with newlines", b"SEND\n\n\nline\r\n\0", [Frame(Command.SEND, (), b"\nline\r\n")]),
]


@pytest.mark.parametrize(
    ("data", "expected"), [case[1:] for case in GOOD], ids=[c[0] for c in GOOD]
)
def test_decodes(data: bytes, expected: list[Frame]) -> None:
    assert decode_all(data) == expected


BAD = [
    ("unknown command", b"HELLO\n\n\0", {}, "unknown command"),
    ("lowercase command", b"send\n\n\0", {}, "unknown command"),
    ("header without colon", b"SEND\nbogus\n\n\0", {}, "malformed header"),
    ("undefined escape", b"SEND\nx:a\\tb\n\n\0", {}, "malformed header"),
    ("content-length not a number", b"SEND\ncontent-length:x\n\n\0", {}, "invalid content-length"),
    ("negative content-length", b"SEND\ncontent-length:-1\n\n\0", {}, "invalid content-length"),
    ("no NUL after content-length", b"SEND\ncontent-length:1\n\nab\0", {}, "not terminated by NUL"),
    ("invalid utf-8", b"SEND\nx:\xff\n\n\0", {}, "not valid UTF-8"),
    (
        "NUL in a header value",
        b"SEND\ndestination:/q\nx-evil:a\0MESSAGE\nx:y\n\nhi\0",
        {},
        "NUL in a header",
    ),
    ("NUL in a header name", b"SEND\nx\0y:1\n\n\0", {}, "NUL in a header"),
    ("NUL in a CONNECT header", b"CONNECT\nlogin:a\0b\n\n\0", {}, "NUL in a header"),
    (
        "NUL in a header, with content-length",
        b"SEND\ncontent-length:1\nx:\0\n\na\0",
        {},
        "NUL in a header",
    ),
    ("too many headers", b"SEND\na:1\nb:2\nc:3\n\n\0", {"max_header_count": 2}, "too many headers"),
    (
        "header line too long",
        b"SEND\nx:" + b"a" * 100 + b"\n\n\0",
        {"max_header_line": 50},
        "header line too long",
    ),
    (
        "unterminated long line",
        b"SEND\nx:" + b"a" * 100,
        {"max_header_line": 50},
        "header line too long",
    ),
    ("body too large", b"SEND\n\n" + b"a" * 100 + b"\0", {"max_body_size": 50}, "body too large"),
    (
        "body too large, unterminated",
        b"SEND\n\n" + b"a" * 100,
        {"max_body_size": 50},
        "body too large",
    ),
    (
        "declared body too large",
        b"SEND\ncontent-length:100\n\n",
        {"max_body_size": 50},
        "body too large",
    ),
    (
        "frame too large",
        b"SEND\nx:" + b"a" * 40 + b"\n\n" + b"b" * 40 + b"\0",
        {"max_frame_size": 60},
        "frame too large",
    ),
]


@pytest.mark.parametrize(
    ("data", "limits", "message"), [c[1:] for c in BAD], ids=[c[0] for c in BAD]
)
def test_rejects(data: bytes, limits: dict[str, int], message: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_all(data, **limits)
    assert message in info.value.message + " " + info.value.detail


def test_decoder_stays_failed() -> None:
    decoder = FrameDecoder()
    decoder.feed(b"BOGUS\n\n\0")
    with pytest.raises(RemoteProtocolError):
        decoder.next_frame()
    with pytest.raises(RemoteProtocolError):
        decoder.next_frame()


def test_frames_come_out_only_when_complete() -> None:
    decoder = FrameDecoder()
    decoder.feed(b"SEND\ncontent-length:2\n\na")
    assert decoder.next_frame() is None
    decoder.feed(b"\0")
    assert decoder.next_frame() is None
    decoder.feed(b"\0")
    assert decoder.next_frame() == Frame(Command.SEND, (("content-length", "2"),), b"a\0")


def test_encode_escapes_except_connect() -> None:
    frame = Frame(Command.MESSAGE, (("a:b", "1\n2\\3\r"),), b"x")
    assert encode_frame(frame) == b"MESSAGE\na\\cb:1\\n2\\\\3\\r\n\nx\0"
    connected = Frame(Command.CONNECTED, (("server", "a:b"),))
    assert encode_frame(connected) == b"CONNECTED\nserver:a:b\n\n\0"


# -- properties -------------------------------------------------------------------------------

# STOMP cannot carry NUL in a header (no escape exists): see test_nul_in_any_header_is_refused.
header_text = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=20
)
header_name = header_text.filter(bool)
commands = st.sampled_from(
    [c for c in Command if c not in (Command.CONNECT, Command.STOMP, Command.CONNECTED)]
)


@st.composite
def frames(draw: st.DrawFn) -> Frame:
    command = draw(commands)
    headers = draw(
        st.lists(
            st.tuples(header_name.filter(lambda n: n != "content-length"), header_text), max_size=6
        )
    )
    body = draw(st.binary(max_size=64))
    headers.append(("content-length", str(len(body))))
    return Frame(command, tuple(headers), body)


@given(st.lists(frames(), min_size=1, max_size=5), st.sampled_from([b"", b"\n", b"\r\n", b"\n\n"]))
def test_round_trip(sent: list[Frame], gap: bytes) -> None:
    data = gap.join(encode_frame(frame) for frame in sent)
    assert decode_all(data) == sent


@settings(max_examples=60)
@given(st.lists(frames(), min_size=1, max_size=4), st.data())
def test_any_split_yields_the_same_frames(sent: list[Frame], data: st.DataObject) -> None:
    stream = b"\n".join(encode_frame(frame) for frame in sent)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    decoder = FrameDecoder()
    got = []
    start = 0
    for cut in [*cuts, len(stream)]:
        decoder.feed(stream[start:cut])
        start = cut
        while (frame := decoder.next_frame()) is not None:
            got.append(frame)
    assert got == sent


def test_every_split_position_of_one_stream() -> None:
    stream = b"\r\nSEND\r\ndestination:/a\\cb\r\ncontent-length:4\r\n\r\n\0\0\n\0\0\nMESSAGE\nx:y\n\nbody\0\n"
    expected = decode_all(stream)
    assert len(expected) == 2
    for cut in range(len(stream) + 1):
        decoder = FrameDecoder()
        got = []
        for part in (stream[:cut], stream[cut:]):
            decoder.feed(part)
            while (frame := decoder.next_frame()) is not None:
                got.append(frame)
        assert got == expected, cut


@given(st.binary(max_size=300))
def test_random_bytes_never_raise_anything_else(data: bytes) -> None:
    decoder = FrameDecoder(
        max_frame_size=200, max_body_size=100, max_header_line=50, max_header_count=4
    )
    try:
        decoder.feed(data)
        while decoder.next_frame() is not None:
            pass
    except RemoteProtocolError:
        pass


@given(frames(), st.data())
def test_nul_in_any_header_is_refused(frame: Frame, data: st.DataObject) -> None:
    # A raw NUL anywhere in any header line (name or value): the decoder fails, whatever came
    # before it, rather than hand on a header a receiver would split into two frames.
    encoded = encode_frame(frame)
    head_end = encoded.index(b"\n\n")
    first_header = encoded.index(b"\n") + 1
    at = data.draw(st.integers(first_header, head_end - 1))
    if encoded[at : at + 1] == b"\n":
        at += 1  # inside the next line rather than between two lines
    poisoned = encoded[:at] + b"\0" + encoded[at:]
    with pytest.raises(RemoteProtocolError) as info:
        decode_all(poisoned)
    assert info.value.detail == "NUL in a header line"
