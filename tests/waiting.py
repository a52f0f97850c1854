"""The one polling wait the tests share, for conditions no trio event signals (state in
another process, RabbitMQ's bindings, counters a sink and a publisher both move)."""

from __future__ import annotations

from collections.abc import Callable

import trio


async def wait_until(
    check: Callable[[], object], within: float = 10.0, step: float = 0.005
) -> float:
    """Wait until `check()` is true; return how long that took. Fails the test (trio's
    TooSlowError, naming `check`) after `within` seconds."""
    start = trio.current_time()
    try:
        with trio.fail_after(within):
            while not check():  # noqa: ASYNC110
                await trio.sleep(step)
    except trio.TooSlowError:
        raise AssertionError(f"still false after {within} s: {check}") from None
    return trio.current_time() - start
