"""The retry policy as a table: delays, the cap, jitter bounds, and when a row dies."""

from __future__ import annotations

from datetime import timedelta

import pytest

from chatd.config import OutboxConfig
from chatd.outbox.retry import JITTER, backoff_delay, plan_failure

from .conftest import T0


@pytest.mark.parametrize(
    ("failures", "base", "cap", "expected"),
    [
        (0, 0.5, 60.0, 0.5),  # the first retry waits the base
        (1, 0.5, 60.0, 1.0),
        (2, 0.5, 60.0, 2.0),
        (6, 0.5, 60.0, 32.0),
        (7, 0.5, 60.0, 60.0),  # 64 capped
        (500, 0.5, 60.0, 60.0),  # no overflow however many failures
        (3, 1.0, 1.0, 1.0),
    ],
)
def test_exponential_delay_with_a_cap(
    failures: int, base: float, cap: float, expected: float
) -> None:
    assert backoff_delay(failures, base=base, cap=cap, rand=1.0) == expected


@pytest.mark.parametrize("rand", [0.0, 0.25, 0.5, 0.99, 1.0])
def test_jitter_only_shortens_and_never_by_more_than_half(rand: float) -> None:
    delay = backoff_delay(9, base=0.5, cap=60.0, rand=rand)
    assert 60.0 * (1 - JITTER) <= delay <= 60.0
    assert delay == pytest.approx(60.0 * (1 - JITTER + JITTER * rand))


@pytest.mark.parametrize(("failures", "rand"), [(-1, 0.5), (0, -0.1), (0, 1.5)])
def test_nonsense_arguments_are_refused(failures: int, rand: float) -> None:
    with pytest.raises(ValueError, match="must"):
        backoff_delay(failures, base=1.0, cap=2.0, rand=rand)


@pytest.mark.parametrize(
    ("retry_count", "attempts", "dead", "delay"),
    [
        (0, 1, False, 0.5),
        (1, 2, False, 1.0),
        (2, 3, True, 2.0),  # the third failed attempt of three is the last
        (7, 8, True, 2.0),  # rows past the limit (the limit was lowered) die at once
    ],
)
def test_plan_failure_counts_attempts_and_dies_at_the_limit(
    retry_count: int, attempts: int, dead: bool, delay: float
) -> None:
    settings = OutboxConfig(max_attempts=3, backoff_base=0.5, backoff_cap=2.0)
    failure = plan_failure(retry_count, settings, now=T0, rand=1.0)
    assert (failure.attempts, failure.dead) == (attempts, dead)
    assert failure.next_retry_at == T0 + timedelta(seconds=delay)
