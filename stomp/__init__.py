"""A STOMP 1.2 broker library: a sans-IO codec and connection, a pure broker core, and thin
trio transports (in `stomp.trio`, the only part that imports trio)."""

from ._codec import DEFAULT_MAX_BODY_SIZE as DEFAULT_MAX_BODY_SIZE
from ._codec import DEFAULT_MAX_FRAME_SIZE as DEFAULT_MAX_FRAME_SIZE
from ._codec import DEFAULT_MAX_HEADER_COUNT as DEFAULT_MAX_HEADER_COUNT
from ._codec import DEFAULT_MAX_HEADER_LINE as DEFAULT_MAX_HEADER_LINE
from ._codec import HEARTBEAT as HEARTBEAT
from ._codec import FrameDecoder as FrameDecoder
from ._codec import encode_frame as encode_frame
from ._connection import DEFAULT_HEARTBEAT as DEFAULT_HEARTBEAT
from ._connection import SUPPORTED_VERSIONS as SUPPORTED_VERSIONS
from ._connection import ServerConnection as ServerConnection
from ._connection import State as State
from ._connection import negotiate_heartbeat as negotiate_heartbeat
from ._errors import LocalProtocolError as LocalProtocolError
from ._errors import ProtocolError as ProtocolError
from ._errors import RemoteProtocolError as RemoteProtocolError
from ._events import Abort as Abort
from ._events import Ack as Ack
from ._events import AckMode as AckMode
from ._events import Begin as Begin
from ._events import ClientEvent as ClientEvent
from ._events import Commit as Commit
from ._events import Connect as Connect
from ._events import Disconnect as Disconnect
from ._events import Event as Event
from ._events import Nack as Nack
from ._events import Send as Send
from ._events import Subscribe as Subscribe
from ._events import Unsubscribe as Unsubscribe
from ._events import Violation as Violation
from ._frames import CLIENT_COMMANDS as CLIENT_COMMANDS
from ._frames import SERVER_COMMANDS as SERVER_COMMANDS
from ._frames import Command as Command
from ._frames import Frame as Frame
from ._frames import escape as escape
from ._frames import unescape as unescape
from ._users import ACCESS_REFUSED as ACCESS_REFUSED
from ._users import Users as Users

__all__ = [
    "ACCESS_REFUSED",
    "CLIENT_COMMANDS",
    "DEFAULT_HEARTBEAT",
    "DEFAULT_MAX_BODY_SIZE",
    "DEFAULT_MAX_FRAME_SIZE",
    "DEFAULT_MAX_HEADER_COUNT",
    "DEFAULT_MAX_HEADER_LINE",
    "HEARTBEAT",
    "SERVER_COMMANDS",
    "SUPPORTED_VERSIONS",
    "Abort",
    "Ack",
    "AckMode",
    "Begin",
    "ClientEvent",
    "Command",
    "Commit",
    "Connect",
    "Disconnect",
    "Event",
    "Frame",
    "FrameDecoder",
    "LocalProtocolError",
    "Nack",
    "ProtocolError",
    "RemoteProtocolError",
    "Send",
    "ServerConnection",
    "State",
    "Subscribe",
    "Unsubscribe",
    "Users",
    "Violation",
    "encode_frame",
    "escape",
    "negotiate_heartbeat",
    "unescape",
]
