"""Cutting a send queue into frames (`one_frame_per_message`): what the broker core writes, with
heart-beat newlines between, comes apart exactly at frame ends, without parsing."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from stomp import HEARTBEAT
from stomp.broker import Write
from stomp.testing import Loopback
from stomp.trio._session import frames_of

TOPIC = "/topic/t"

_bodies = st.binary(max_size=64) | st.sampled_from([b"", b"\0", b"\n", b"a\0\n\0", b"\n\n\0\0"])
_text = st.text(alphabet=st.sampled_from("ab:\\\n\r\0é"), max_size=8)
_writes = st.lists(
    st.one_of(
        st.tuples(st.just("publish"), _bodies, _text),
        st.tuples(st.just("receipt"), st.just(b""), _text),
        st.tuples(st.just("heartbeat"), st.just(b""), st.just("")),
    ),
    max_size=20,
)


@given(writes=_writes, version=st.sampled_from(["1.0", "1.1", "1.2"]))
def test_frames_of_cuts_exactly_at_frame_ends(
    writes: list[tuple[str, bytes, str]], version: str
) -> None:
    loopback = Loopback()
    client = loopback.client(version=version)
    client.send("SUBSCRIBE", {"destination": TOPIC, "id": "1"})
    broker = loopback.broker
    chunks: list[bytes] = []
    expected: list[bytes] = []
    for kind, body, text in writes:
        if kind == "heartbeat":
            chunks.append(HEARTBEAT)
            expected.append(HEARTBEAT)
            continue
        if kind == "publish":
            headers = (("x-h", text),) if version != "1.0" else ()
            actions = broker.publish(TOPIC, body, headers)
        else:
            # A 1.0 receipt id came in a header line: it holds no newline.
            actions = broker.receipt(client.session, text.replace("\n", "") or "r")
        for action in actions:
            assert isinstance(action, Write)
            chunks.append(action.data)  # as the runtime queues them: data, then a tail if any
            if action.tail:
                chunks.append(action.tail)
            expected.append(action.data + action.tail)
    assert list(frames_of(chunks)) == expected
