"""Structured logs: one JSON object per line for log collectors, plain text for people.

Every line carries ``time`` (ISO-8601 UTC), ``level``, ``logger`` and ``event`` (the message),
plus what the code attached with ``extra=`` among `FIELDS` and the id of the request being
served (set in the `request_id` context variable by the HTTP layer, so a line logged deep in a
service still says which request it belongs to). With tracing on, a line logged inside a span
also carries ``trace_id`` and ``span_id`` (`TraceIds`: the tracer's `ids`), to find its trace.

What never gets out: a bearer token or any JWT-shaped string (replaced by ``[redacted]`` in
the event text and every field, whatever logged it), the user's email unless
``logging.include_user``, message text unless ``logging.include_content``, and the
ciphertext envelope of an end-to-end encrypted message ever (`content_field` replaces it even
with content logging on: an operator who logs content still gets nothing to collect).
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

from chatd.config import LoggingConfig
from chatd.domain.envelope import looks_like_envelope

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "chatd_request_id", default=None
)

#: `extra=` keys copied into a JSON line (others are ignored, so a stray attribute cannot
#: leak). `user` and `content` are further gated by the config.
FIELDS = (
    "request_id",
    "method",
    "path",
    "status",
    "duration_ms",
    "remote",
    "user",
    "content",
    "chat_session",
    "seq",
    "destination",
    "error",
    "part",
    "address",
    "cause",
    "hint",
    "retry_in",
)
PRIVATE_FIELDS = {"user": "include_user", "content": "include_content"}
REDACTED = "[redacted]"
ENCRYPTED = "[encrypted]"
# A JWT (three base64url parts, the first starting "eyJ" = '{"') or an Authorization value.
_SECRET = re.compile(r"eyJ[\w-]*\.[\w-]+\.[\w-]*|(?i:bearer)\s+[\w.~+/=-]+")

Format = Literal["json", "text"]
#: The current span's (trace id, span id), None outside a span (`Tracer.ids`).
TraceIds = Callable[[], tuple[str, str] | None]


def redact(text: str) -> str:
    """`text` with every token-like string replaced by ``[redacted]``."""
    return _SECRET.sub(REDACTED, text)


def content_field(value: object) -> object:
    """A ``content`` field as it may be logged: an encrypted envelope never is."""
    if isinstance(value, str) and looks_like_envelope(value):
        return ENCRYPTED
    return value


def choose_format(configured: str, stream: TextIO | None = None) -> Format:
    """``json`` | ``text`` as configured; ``auto`` means text on a TTY, else JSON."""
    if configured in ("json", "text"):
        return configured  # type: ignore[return-value]
    stream = stream if stream is not None else sys.stderr
    isatty = getattr(stream, "isatty", None)
    return "text" if isatty is not None and isatty() else "json"


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring for the fields)."""

    def __init__(
        self,
        *,
        include_user: bool = False,
        include_content: bool = False,
        trace_ids: TraceIds | None = None,
    ) -> None:
        super().__init__()
        self.allowed = {"include_user": include_user, "include_content": include_content}
        self.trace_ids = trace_ids

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "event": redact(record.getMessage()),
        }
        rid = request_id.get()
        if rid is not None:
            out["request_id"] = rid
        if self.trace_ids is not None and (ids := self.trace_ids()) is not None:
            out["trace_id"], out["span_id"] = ids
        for key in FIELDS:
            if key not in record.__dict__:
                continue
            gate = PRIVATE_FIELDS.get(key)
            if gate is not None and not self.allowed[gate]:
                continue
            value = record.__dict__[key]
            if key == "content":
                value = content_field(value)
            out[key] = redact(value) if isinstance(value, str) else value
        if record.exc_info:
            out["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(out, ensure_ascii=False, default=str)


#: Fields an access-log or start-up line already says in its text; the text format leaves
#: them out.
_IN_TEXT = frozenset(
    {"method", "path", "status", "duration_ms", "part", "address", "cause", "hint", "retry_in"}
)


class TextFormatter(logging.Formatter):
    """``time level logger: event [key=value...]`` for people; same redaction and gates."""

    def __init__(
        self,
        *,
        include_user: bool = False,
        include_content: bool = False,
        trace_ids: TraceIds | None = None,
    ) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.allowed = {"include_user": include_user, "include_content": include_content}
        self.trace_ids = trace_ids

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = []
        rid = request_id.get()
        if rid is not None and "request_id" not in record.__dict__:
            extras.append(f"request_id={rid}")
        if self.trace_ids is not None and (ids := self.trace_ids()) is not None:
            extras.append(f"trace_id={ids[0]}")
        for key in FIELDS:
            if key in record.__dict__ and key not in _IN_TEXT:
                gate = PRIVATE_FIELDS.get(key)
                if gate is None or self.allowed[gate]:
                    value = record.__dict__[key]
                    if key == "content":
                        value = content_field(value)
                    extras.append(f"{key}={value}")
        if extras:
            line = f"{line} [{' '.join(extras)}]"
        return redact(line)


def make_formatter(config: LoggingConfig, stream: TextIO | None = None) -> logging.Formatter:
    """The formatter `config` asks for (``auto`` decided against `stream`)."""
    kind = choose_format(config.format, stream)
    cls = JsonFormatter if kind == "json" else TextFormatter
    return cls(include_user=config.include_user, include_content=config.include_content)


def show_trace_ids(trace_ids: TraceIds | None) -> None:
    """Make chatd's formatters on the root logger add the current span's ids (None: stop).

    Separate from `configure_logging` because logging is set up before anything else (the
    CLI), and tracing only once the server starts."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler.formatter, JsonFormatter | TextFormatter):
            handler.formatter.trace_ids = trace_ids


def configure_logging(config: LoggingConfig, stream: TextIO | None = None) -> bool:
    """Send chatd's logs to `stream` (stderr) in the configured format; return True if done.

    Only when nobody configured logging yet (the CLI): a host application or pytest keeps its
    own handlers, and only the ``chatd`` level is set then.
    """
    logging.getLogger("chatd").setLevel(config.level)
    root = logging.getLogger()
    if root.handlers:
        return False
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(make_formatter(config, handler.stream))
    root.addHandler(handler)
    root.setLevel(config.level)
    return True
