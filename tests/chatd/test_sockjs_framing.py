"""SockJS framing, pure: frames, escaping, decoding errors, ids, callbacks, transport wraps."""

from __future__ import annotations

import json

import pytest

from chatd.realtime.sockjs.framing import (
    PayloadError,
    callback_error,
    close_frame,
    decode_messages,
    encode_json,
    htmlfile_prelude,
    iframe_html,
    message_frame,
    valid_id,
    wrap_eventsource,
    wrap_htmlfile,
    wrap_jsonp,
    wrap_xhr,
)


@pytest.mark.parametrize(
    ("messages", "frame"),
    [
        ([], "a[]"),
        (["a"], 'a["a"]'),
        (["a", "b"], 'a["a","b"]'),
        (['say "hi"\n'], 'a["say \\"hi\\"\\n"]'),
        (["CONNECTED\n\n\x00"], 'a["CONNECTED\\n\\n\\u0000"]'),
        (["é ü 漢"], 'a["é ü 漢"]'),  # non-ASCII text is sent as UTF-8
        (
            ["\u2028\u2029\u200c\u200f\u2060\u206f\ufff0\uffff"],
            'a["\\u2028\\u2029\\u200c\\u200f\\u2060\\u206f\\ufff0\\uffff"]',
        ),
        (["\x7f"], 'a["\x7f"]'),
    ],
)
def test_message_frame(messages: list[str], frame: str) -> None:
    assert message_frame(messages) == frame
    assert json.loads(frame[1:]) == messages


def test_every_character_the_protocol_lists_is_escaped() -> None:
    # sockjs-protocol's escapable_by_server, above 0xff (the rest is JSON's own escaping).
    listed = [
        c
        for c in map(chr, range(0x100, 0x10000))
        if 0x200C <= ord(c) <= 0x200F
        or 0x2028 <= ord(c) <= 0x202F
        or 0x2060 <= ord(c) <= 0x206F
        or ord(c) >= 0xFFF0
    ]
    text = "".join(listed)
    encoded = encode_json(text)
    assert encoded == '"' + "".join(f"\\u{ord(c):04x}" for c in listed) + '"'
    assert json.loads(encoded) == text


def test_close_frame() -> None:
    assert close_frame(3000, "Go away!") == 'c[3000,"Go away!"]'
    assert close_frame(2010, "Another connection still open") == (
        'c[2010,"Another connection still open"]'
    )


@pytest.mark.parametrize(
    ("payload", "messages"),
    [
        ('["a"]', ["a"]),
        (b'["a","b"]', ["a", "b"]),
        ('"single"', ["single"]),
        ("[]", []),
        ('["\\u2028\\ud83d\\ude00"]', ["\u2028\U0001f600"]),
    ],
)
def test_decode_messages(payload: str | bytes, messages: list[str]) -> None:
    assert decode_messages(payload) == messages


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        ("", "Payload expected."),
        (b"", "Payload expected."),
        ('["a', "Broken JSON encoding."),
        ("[1]", "Broken JSON encoding."),
        ('{"a": "b"}', "Broken JSON encoding."),
        ("null", "Broken JSON encoding."),
        (b"\xff\xfe", "Broken JSON encoding."),
        ("[" * 100_000, "Broken JSON encoding."),
    ],
)
def test_decode_errors(payload: str | bytes, error: str) -> None:
    with pytest.raises(PayloadError, match=error.replace(".", r"\.")):
        decode_messages(payload)


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("000", True),
        ("a", True),
        ("_", True),
        ("abc-def_ghi%20", True),
        ("", False),
        ("a.", False),
        (".", False),
        ("a/b", False),
    ],
)
def test_valid_id(value: str, ok: bool) -> None:
    assert valid_id(value) is ok


@pytest.mark.parametrize(
    ("callback", "error"),
    [
        ("callback", None),
        ("a.b_c-1", None),
        ("_jp.a3b4c5.f", None),
        (None, '"callback" parameter required'),
        ("", '"callback" parameter required'),
        ("x(1)", 'invalid "callback" parameter'),
        ("a b", 'invalid "callback" parameter'),
        ("alert;//", 'invalid "callback" parameter'),
        ("é", 'invalid "callback" parameter'),
    ],
)
def test_callback_validation(callback: str | None, error: str | None) -> None:
    assert callback_error(callback) == error


def test_transport_wrapping() -> None:
    frame = 'a["x\\"y"]'
    assert wrap_xhr(frame) == frame + "\n"
    assert wrap_eventsource(frame) == 'data: a["x\\"y"]\r\n\r\n'
    assert wrap_htmlfile("o") == '<script>\np("o");\n</script>\r\n'
    assert wrap_htmlfile(frame) == '<script>\np("a[\\"x\\\\\\"y\\"]");\n</script>\r\n'
    assert wrap_jsonp("cb")("o") == '/**/cb("o");\r\n'
    assert wrap_jsonp("cb")("\u2028") == '/**/cb("\\u2028");\r\n'


def test_htmlfile_prelude_is_padded_past_one_kib() -> None:
    prelude = htmlfile_prelude("parent_cb")
    assert len(prelude) > 1024
    assert "var c = parent.parent_cb;" in prelude
    assert prelude.startswith("<!doctype html>")


def test_iframe_page_loads_the_client() -> None:
    page = iframe_html("/static/sockjs.js")
    assert '<script src="/static/sockjs.js"></script>' in page
    assert "SockJS.bootstrap_iframe()" in page
