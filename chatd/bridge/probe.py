"""One AMQP connection, opened and closed: what ``chatd check-config --connect`` tries."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

import pika
import pika.exceptions

DEFAULT_PROBE_TIMEOUT = 5.0


def amqp_where(url: str) -> str:
    """``host:port/vhost`` of an AMQP URL, without credentials."""
    parts = urlsplit(url)
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    default = 5671 if parts.scheme == "amqps" else 5672
    return f"{parts.hostname or 'localhost'}:{parts.port or default}/{vhost.lstrip('/') or '%2F'}"


def probe_amqp(url: str, *, timeout: float = DEFAULT_PROBE_TIMEOUT) -> None:
    """Connect to `url` and close again, blocking for at most about `timeout` seconds.

    Raises `ConnectionError` whose text says why, as an operator would want it: login
    refused, virtual host refused, or the socket error.
    """
    params = pika.URLParameters(url)
    params.connection_attempts = 1
    params.socket_timeout = timeout
    params.stack_timeout = timeout
    params.blocked_connection_timeout = timeout
    try:
        connection = pika.BlockingConnection(params)
    except pika.exceptions.ProbableAuthenticationError:
        raise ConnectionError("login refused (user or password)") from None
    except pika.exceptions.ProbableAccessDeniedError:
        raise ConnectionError(
            f"access to virtual host {params.virtual_host!r} refused (missing, or the user "
            "has no permission)"
        ) from None
    except (pika.exceptions.AMQPConnectionError, OSError) as exc:  # OSError: name lookup
        raise ConnectionError(_cause(exc)) from None
    connection.close()


def _cause(exc: BaseException) -> str:
    # pika nests the socket error: AMQPConnectionError(AMQPConnectorSocketConnectError with
    # .exception = ConnectionRefusedError(111, "Connection refused"))
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    inner = getattr(exc, "exception", None)
    for arg in [inner, *exc.args]:
        if isinstance(arg, BaseException):
            return _cause(arg)
    return str(exc) or type(exc).__name__


__all__ = ["DEFAULT_PROBE_TIMEOUT", "amqp_where", "probe_amqp"]
