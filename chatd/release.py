"""The release running, as the installed package says (metrics, the STOMP `server` header)."""

from __future__ import annotations

from functools import cache


@cache
def version() -> str:
    """chatd's version, or "unknown" when running from a source tree never installed."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("chatd")
    except PackageNotFoundError:
        return "unknown"
