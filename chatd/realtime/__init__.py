"""Real-time delivery over STOMP: the broker hooks, the `/app` handlers, local delivery of
outbox rows and gap replay. Only this package and `chatd.http.ws` import `stomp.trio`."""

from chatd.realtime.delivery import LocalDelivery
from chatd.realtime.hooks import ChatHooks, build_runtime

__all__ = ["ChatHooks", "LocalDelivery", "build_runtime"]
