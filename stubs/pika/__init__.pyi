from collections.abc import Callable, Mapping
from typing import Any

from pika import adapters as adapters
from pika import exceptions as exceptions
from pika import spec as spec
from pika.adapters.select_connection import IOLoop
from pika.channel import Channel

class ConnectionParameters:
    heartbeat: int | None
    connection_attempts: int
    socket_timeout: float | None
    stack_timeout: float | None
    blocked_connection_timeout: float | None
    virtual_host: str

class URLParameters(ConnectionParameters):
    def __init__(self, url: str) -> None: ...

class BasicProperties:
    headers: dict[str, Any] | None
    message_id: str | None
    def __init__(self, *, content_type: str | None = ..., delivery_mode: int | None = ...,
                 message_id: str | None = ..., headers: Mapping[str, Any] | None = ...,
                 **kwargs: Any) -> None: ...

class SelectConnection:
    is_open: bool
    is_opening: bool
    is_closing: bool
    def __init__(self, parameters: ConnectionParameters | None = ...,
                 on_open_callback: Callable[[SelectConnection], object] | None = ...,
                 on_open_error_callback: Callable[[SelectConnection, BaseException], object]
                 | None = ...,
                 on_close_callback: Callable[[SelectConnection, BaseException], object]
                 | None = ...,
                 custom_ioloop: IOLoop | None = ...) -> None: ...
    def add_on_connection_blocked_callback(
        self, callback: Callable[[SelectConnection, Any], object]) -> None: ...
    def add_on_connection_unblocked_callback(
        self, callback: Callable[[SelectConnection, Any], object]) -> None: ...
    def channel(self, channel_number: int | None = ...,
                on_open_callback: Callable[[Channel], object] | None = ...) -> Channel: ...
    def close(self, reply_code: int = ..., reply_text: str = ...) -> None: ...
    # private, but pika has no public way to drop a connection whose peer stopped answering
    def _terminate_stream(self, error: BaseException | None) -> None: ...

class BlockingConnection:
    def __init__(self, parameters: ConnectionParameters | None = ...) -> None: ...
    def close(self, reply_code: int = ..., reply_text: str = ...) -> None: ...
