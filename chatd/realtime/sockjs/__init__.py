"""SockJS: pure framing (`framing`), sessions carrying STOMP (`session`), and their table
(`sessions`). The HTTP routes live in `chatd.http.sockjs_routes`."""

from chatd.realtime.sockjs.sessions import SockJSSessions, SockJSSettings

__all__ = ["SockJSSessions", "SockJSSettings"]
