"""Use-cases shared by REST and STOMP; storage only through the `Store` protocol."""

from chatd.services.chat import ChatService, Clock, utc_now
from chatd.services.health import Readiness

__all__ = ["ChatService", "Clock", "Readiness", "utc_now"]
