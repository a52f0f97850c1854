"""Pure rules: emails, content, client message ids, history limits, the send rate limiter."""

from __future__ import annotations

import pytest

from chatd.config import LimitsConfig
from chatd.domain import rules
from chatd.domain.errors import BadRequest, PayloadTooLarge, RateLimited
from chatd.domain.rules import (
    SendRateLimiter,
    is_email,
    normalize_email,
    parse_history_limit,
    require_email,
    validate_client_message_id,
    validate_content,
)


def test_normalize_email() -> None:
    assert normalize_email("  Bob@Example.ORG\n") == "bob@example.org"


@pytest.mark.parametrize(
    "value", ["a@example.com", "first.last+tag@mail.example.co.uk", "x_y@a-b.io"]
)
def test_is_email(value: str) -> None:
    assert is_email(value)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "a",
        "a@",
        "@example.com",
        "a@localhost",
        "a b@example.com",
        "a@b@example.com",
        "a/b@example.com",
        "a:b@example.com",
        ".a@example.com",
        "a@-x.com",
        "A@example.com",
        "a" * 250 + "@example.com",
    ],
)
def test_is_not_email(value: str) -> None:
    assert not is_email(value)


def test_require_email() -> None:
    assert require_email(" Ann@Example.com ", "toEmail") == "ann@example.com"
    with pytest.raises(BadRequest, match="toEmail is not a valid email"):
        require_email("nope", "toEmail")
    with pytest.raises(BadRequest, match="toEmail must be a string"):
        require_email(None, "toEmail")


def test_validate_content_accepts_text_newlines_tabs_and_emoji() -> None:
    text = "hi\tthere\nline two 👋🏽 \u200d"
    assert validate_content(text) == text
    assert validate_content("x" * 4000) == "x" * 4000


@pytest.mark.parametrize(
    ("content", "error", "pattern"),
    [
        ("", BadRequest, "empty"),
        (" \n\t ", BadRequest, "empty"),
        (None, BadRequest, "must be a string"),
        (42, BadRequest, "must be a string"),
        ("x" * 4001, PayloadTooLarge, "4001 characters.*4000"),
        ("bell\x07", BadRequest, "control character \\(U\\+0007\\)"),
        ("cr\r\n", BadRequest, "U\\+000D"),
        ("nul\x00", BadRequest, "U\\+0000"),
        ("lone \ud800 surrogate", BadRequest, "surrogate"),
    ],
)
def test_validate_content_refuses(content: object, error: type[Exception], pattern: str) -> None:
    with pytest.raises(error, match=pattern):
        validate_content(content)


def test_validate_content_follows_limits() -> None:
    limits = LimitsConfig(max_content_length=5, allow_control_chars=True)
    assert validate_content("a\x07b", limits) == "a\x07b"
    with pytest.raises(PayloadTooLarge) as info:
        validate_content("abcdef", limits)
    assert info.value.status == 413


@pytest.mark.parametrize("value", ["m-1", "x" * 100, "uuid 0f8c with space"])
def test_client_message_id_ok(value: str) -> None:
    assert validate_client_message_id(value) == value


@pytest.mark.parametrize("value", [None, "", "   ", "x" * 101, "tab\there", 7])
def test_client_message_id_refused(value: object) -> None:
    with pytest.raises(BadRequest, match="clientMessageId"):
        validate_client_message_id(value)


def test_parse_history_limit() -> None:
    assert parse_history_limit(None) == 50
    assert parse_history_limit("") == 50
    assert parse_history_limit("10") == 10
    assert parse_history_limit(1000) == 200
    for bad in ("0", "-1", "ten", "1.5", True):
        with pytest.raises(BadRequest, match="limit"):
            parse_history_limit(bad)


def burst(limiter: SendRateLimiter, user: str, count: int, now: float) -> None:
    for i in range(count):
        limiter.check(user, f"message {i}", now)


def test_burst_then_refusal_with_retry_after() -> None:
    limiter = SendRateLimiter(send_burst=5, sends_per_second=2)
    burst(limiter, "a@x.io", 5, now=100.0)
    with pytest.raises(RateLimited) as info:
        limiter.check("a@x.io", "one more", 100.0)
    assert info.value.status == 429
    assert info.value.retry_after == pytest.approx(0.5)
    # Another user is not affected.
    limiter.check("b@x.io", "hello", 100.0)


def test_refill_and_retry_after_shrinks() -> None:
    limiter = SendRateLimiter(send_burst=2, sends_per_second=1)
    burst(limiter, "a@x.io", 2, now=0.0)
    with pytest.raises(RateLimited) as info:
        limiter.check("a@x.io", "x", 0.4)
    assert info.value.retry_after == pytest.approx(0.6)
    limiter.check("a@x.io", "x", 1.0)  # one token back after 1 s
    with pytest.raises(RateLimited):
        limiter.check("a@x.io", "y", 1.0)
    burst(limiter, "a@x.io", 2, now=100.0)  # refills to the burst size, never above
    with pytest.raises(RateLimited):
        limiter.check("a@x.io", "z", 100.0)


def test_refused_send_consumes_nothing() -> None:
    limiter = SendRateLimiter(send_burst=1, sends_per_second=1)
    limiter.check("a@x.io", "x", 0.0)
    for _ in range(10):
        with pytest.raises(RateLimited):
            limiter.check("a@x.io", "x", 0.5)
    limiter.check("a@x.io", "x", 1.0)


def test_default_bucket_is_200_then_20_per_second() -> None:
    limiter = SendRateLimiter.from_limits(LimitsConfig())
    burst(limiter, "a@x.io", 200, now=0.0)
    with pytest.raises(RateLimited):
        limiter.check("a@x.io", "more", 0.0)
    burst(limiter, "a@x.io", 20, now=1.0)
    with pytest.raises(RateLimited):
        limiter.check("a@x.io", "more", 1.0)


def test_identical_content_rule() -> None:
    limiter = SendRateLimiter(identical_content=3, identical_window_seconds=10)
    for t in (0.0, 1.0, 2.0):
        limiter.check("a@x.io", "spam", t)
    with pytest.raises(RateLimited, match="same message") as info:
        limiter.check("a@x.io", "spam", 3.0)
    assert info.value.retry_after == pytest.approx(7.0)  # the first one leaves at t = 10
    limiter.check("a@x.io", "something else", 3.0)
    limiter.check("b@x.io", "spam", 3.0)  # per user
    with pytest.raises(RateLimited):
        limiter.check("a@x.io", "spam", 9.9)
    limiter.check("a@x.io", "spam", 10.0)  # sliding: the t=0 send has left the window
    with pytest.raises(RateLimited) as info:
        limiter.check("a@x.io", "spam", 10.5)
    assert info.value.retry_after == pytest.approx(0.5)


def test_identical_rule_defaults_twenty_in_ten_seconds() -> None:
    limiter = SendRateLimiter()
    for i in range(20):
        limiter.check("a@x.io", "same", i * 0.1)
    with pytest.raises(RateLimited):
        limiter.check("a@x.io", "same", 2.0)
    limiter.check("a@x.io", "same", 10.01)


def test_memory_is_bounded() -> None:
    limiter = SendRateLimiter(max_users=100)
    for i in range(10_000):
        limiter.check(f"user{i}@x.io", "hi", float(i))
    assert len(limiter) == 100
    # The per-user history is bounded by the window, not by how long the user has been around.
    limiter = SendRateLimiter(send_burst=10, sends_per_second=10, identical_window_seconds=1)
    for i in range(10_000):
        limiter.check("a@x.io", f"text {i}", i * 0.1)
    state = limiter._users.get("a@x.io")
    assert state is not None
    assert len(state.recent) <= 11
    assert len(state.counts) <= 11


def test_refund_gives_back_the_token_and_the_identical_count() -> None:
    limiter = SendRateLimiter(send_burst=2, sends_per_second=0.001, identical_content=1)
    limiter.check("a@x.io", "hi", 0.0)
    limiter.refund("a@x.io", "hi")  # it was a repeat after all
    limiter.check("a@x.io", "hi", 0.0)  # neither the bucket nor the identical rule counted it
    limiter.check("a@x.io", "other", 0.0)
    with pytest.raises(RateLimited):
        limiter.check("a@x.io", "third", 0.0)
    limiter.refund("nobody@x.io", "hi")  # unknown user or text: nothing to undo
    limiter.refund("a@x.io", "never sent")
    with pytest.raises(RateLimited):
        limiter.check("a@x.io", "third", 0.0)


def test_limiter_rejects_nonsense_settings() -> None:
    with pytest.raises(ValueError, match="sends_per_second"):
        SendRateLimiter(sends_per_second=0)
    with pytest.raises(ValueError, match="identical_content"):
        SendRateLimiter(identical_content=0)


def test_defaults_are_shared_with_config() -> None:
    limits = LimitsConfig()
    assert limits.send_burst == rules.DEFAULT_SEND_BURST == 200
    assert limits.sends_per_second == rules.DEFAULT_SENDS_PER_SECOND == 20
    assert limits.identical_content == rules.DEFAULT_IDENTICAL_CONTENT == 20


def test_a_batch_is_charged_per_text_and_refused_whole() -> None:
    limiter = SendRateLimiter(send_burst=5, sends_per_second=2)
    limiter.check_many("a@x.io", ["1", "2", "3"], 10.0)
    with pytest.raises(RateLimited) as info:
        limiter.check_many("a@x.io", ["4", "5", "6"], 10.0)  # 2 tokens left, 3 needed
    assert info.value.retry_after == pytest.approx(0.5)
    assert "batch of 3" in info.value.message
    limiter.check_many("a@x.io", ["4", "5"], 10.0)  # the refusal consumed nothing
    with pytest.raises(RateLimited):
        limiter.check("a@x.io", "6", 10.0)


def test_identical_texts_in_a_batch_count_against_the_cap() -> None:
    limiter = SendRateLimiter(identical_content=3, identical_window_seconds=10)
    limiter.check("a@x.io", "same", 0.0)
    limiter.check("a@x.io", "same", 4.0)
    with pytest.raises(RateLimited) as info:
        limiter.check_many("a@x.io", ["same", "other", "same"], 5.0)
    # 2 + 2 copies > 3: the oldest must leave the window first (sent at 0 s, gone at 10 s)
    assert info.value.retry_after == pytest.approx(5.0)
    limiter.check_many("a@x.io", ["same", "other"], 5.0)
    with pytest.raises(RateLimited) as info:  # now 3 + 2: both older ones must go, at 14 s
        limiter.check_many("a@x.io", ["same", "same"], 6.0)
    assert info.value.retry_after == pytest.approx(8.0)
