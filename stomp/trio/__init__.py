"""trio transports for the STOMP broker: the only part of `stomp` that imports trio.

`BrokerRuntime` owns a `Broker` and carries out its actions; `serve_stream` pumps one session
over anything stream-shaped; `serve_tcp` and `serve_websocket` accept peers, and
`serve_websocket_connection` serves one socket an application accepted itself (with
`accept_connections`, say: every waiting connection in one go, not one a turn of the loop);
`MessageStream` adapts any other message-based WebSocket (e.g. Quart's) to the session pump.
"""

from ._accept import ACCEPT_BATCH as ACCEPT_BATCH
from ._accept import accept_connections as accept_connections
from ._hooks import AllowAll as AllowAll
from ._hooks import Authenticated as Authenticated
from ._hooks import CheckPasswords as CheckPasswords
from ._hooks import Hooks as Hooks
from ._hooks import Principal as Principal
from ._hooks import Refused as Refused
from ._hooks import TransportInfo as TransportInfo
from ._runtime import CREDENTIALS_EXPIRED_MESSAGE as CREDENTIALS_EXPIRED_MESSAGE
from ._runtime import DEFAULT_CLOSE_TIMEOUT as DEFAULT_CLOSE_TIMEOUT
from ._runtime import DEFAULT_CONNECT_TIMEOUT as DEFAULT_CONNECT_TIMEOUT
from ._runtime import DEFAULT_HEARTBEAT_GRACE as DEFAULT_HEARTBEAT_GRACE
from ._runtime import DEFAULT_MAX_PENDING_BYTES as DEFAULT_MAX_PENDING_BYTES
from ._runtime import DEFAULT_MAX_PENDING_FRAMES as DEFAULT_MAX_PENDING_FRAMES
from ._runtime import DEFAULT_SHUTDOWN_TIMEOUT as DEFAULT_SHUTDOWN_TIMEOUT
from ._runtime import SHUTDOWN_MESSAGE as SHUTDOWN_MESSAGE
from ._runtime import SLOW_CONSUMER_MESSAGE as SLOW_CONSUMER_MESSAGE
from ._runtime import BrokerRuntime as BrokerRuntime
from ._session import CLOSE_GOING_AWAY as CLOSE_GOING_AWAY
from ._session import CLOSE_NORMAL as CLOSE_NORMAL
from ._session import OneFramePerMessage as OneFramePerMessage
from ._session import Stream as Stream
from ._session import serve_stream as serve_stream
from ._stats import RuntimeStats as RuntimeStats
from ._tcp import serve_tcp as serve_tcp
from ._websocket import SUBPROTOCOLS as SUBPROTOCOLS
from ._websocket import MessageStream as MessageStream
from ._websocket import choose_subprotocol as choose_subprotocol
from ._websocket import serve_websocket as serve_websocket
from ._websocket import serve_websocket_connection as serve_websocket_connection
from ._websocket import websocket_stream as websocket_stream

__all__ = [
    "ACCEPT_BATCH",
    "CLOSE_GOING_AWAY",
    "CLOSE_NORMAL",
    "CREDENTIALS_EXPIRED_MESSAGE",
    "DEFAULT_CLOSE_TIMEOUT",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_HEARTBEAT_GRACE",
    "DEFAULT_MAX_PENDING_BYTES",
    "DEFAULT_MAX_PENDING_FRAMES",
    "DEFAULT_SHUTDOWN_TIMEOUT",
    "SHUTDOWN_MESSAGE",
    "SLOW_CONSUMER_MESSAGE",
    "SUBPROTOCOLS",
    "AllowAll",
    "Authenticated",
    "BrokerRuntime",
    "CheckPasswords",
    "Hooks",
    "MessageStream",
    "OneFramePerMessage",
    "Principal",
    "Refused",
    "RuntimeStats",
    "Stream",
    "TransportInfo",
    "accept_connections",
    "choose_subprotocol",
    "serve_stream",
    "serve_tcp",
    "serve_websocket",
    "serve_websocket_connection",
    "websocket_stream",
]
