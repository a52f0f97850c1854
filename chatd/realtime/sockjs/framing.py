"""SockJS framing, pure: frames out, messages in, per-transport wrapping, id and callback rules.

SockJS (the sockjs-protocol 0.3 test suite is the spec) puts its own small framing on every
transport: ``o`` opens a session, ``h`` is a heart-beat, ``a[...]`` carries a JSON array of
message strings and ``c[code,"reason"]`` closes. The HTTP transports then wrap each frame
(a newline for xhr, ``data: ...`` for EventSource, a ``<script>`` for htmlfile, a callback call
for JSONP). Nothing here does I/O, so every rule is testable with plain strings.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Final

from chatd.domain.models import compact_json

OPEN: Final = "o"
HEARTBEAT: Final = "h"

#: Close codes and reasons the protocol names.
GO_AWAY: Final = (3000, "Go away!")
ANOTHER_CONNECTION: Final = (2010, "Another connection still open")
INTERRUPTED: Final = (1002, "Connection interrupted")

#: xhr_streaming's prelude: 2 KiB of ``h`` so that old browsers start handing data over.
XHR_STREAMING_PRELUDE: Final = "h" * 2048 + "\n"
#: EventSource's prelude, for an old Opera bug.
EVENTSOURCE_PRELUDE: Final = "\r\n"

# Characters JSON allows raw but that browsers or proxies mangle on the way (the protocol's
# `escapable_by_server`): control characters, joiners, line/paragraph separators, specials.
_ESCAPABLE = re.compile("[\x00-\x1f\u200c-\u200f\u2028-\u202f\u2060-\u206f\ufff0-\uffff]")
# Server and session ids: anything but an empty string or one with a dot (or a slash, which
# routing already excludes).
_ID = re.compile(r"^[^/.]+$")
# JSONP/htmlfile callbacks become JavaScript: only names and dotted paths are allowed.
_CALLBACK = re.compile(r"^[a-zA-Z0-9_.-]+$")


class PayloadError(ValueError):
    """A client sent something SockJS cannot read; `str()` is the protocol's 500 body."""


def _escape(text: str) -> str:
    return _ESCAPABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def encode_json(value: object) -> str:
    """`value` as compact JSON with the characters SockJS requires escaped (non-ASCII text
    otherwise stays as is: WebSockets and XHR carry UTF-8 fine)."""
    return _escape(compact_json(value))


def message_frame(messages: list[str]) -> str:
    """The ``a[...]`` frame carrying `messages`."""
    return "a" + encode_json(messages)


def close_frame(code: int, reason: str) -> str:
    """The ``c[code,"reason"]`` frame."""
    return "c" + encode_json([code, reason])


def decode_messages(payload: bytes | str) -> list[str]:
    """The messages a client sent: a JSON array of strings, or (WebSocket) one JSON string.

    Raises `PayloadError` with ``"Payload expected."`` for an empty payload and ``"Broken JSON
    encoding."`` for anything that is not JSON or not strings.
    """
    if isinstance(payload, bytes):
        try:
            payload = payload.decode("utf-8")
        except UnicodeDecodeError:
            raise PayloadError("Broken JSON encoding.") from None
    if not payload:
        raise PayloadError("Payload expected.")
    try:
        value = json.loads(payload)
    except (ValueError, RecursionError):
        raise PayloadError("Broken JSON encoding.") from None
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise PayloadError("Broken JSON encoding.")
    return value


def valid_id(value: str) -> bool:
    """Whether `value` may be a server or session id (non-empty, no dot)."""
    return bool(_ID.match(value))


def callback_error(callback: str | None) -> str | None:
    """Why `callback` cannot be used as a JSONP/htmlfile callback, or None if it can."""
    if not callback:
        return '"callback" parameter required'
    if not _CALLBACK.match(callback):
        return 'invalid "callback" parameter'
    return None


# -- per-transport wrapping ---------------------------------------------------------------------


def wrap_xhr(frame: str) -> str:
    """xhr and xhr_streaming: one frame per line."""
    return frame + "\n"


def wrap_eventsource(frame: str) -> str:
    """EventSource: one event per frame (JSON never holds a raw newline)."""
    return f"data: {frame}\r\n\r\n"


def wrap_htmlfile(frame: str) -> str:
    """htmlfile: a script calling ``p()`` with the frame as a JS string."""
    return f"<script>\np({encode_json(frame)});\n</script>\r\n"


def wrap_jsonp(callback: str) -> Callable[[str], str]:
    """JSONP: a call of `callback` with the frame (the ``/**/`` prefix defeats content
    sniffing of the response as something other than script)."""

    def wrap(frame: str) -> str:
        return f"/**/{callback}({encode_json(frame)});\r\n"

    return wrap


HTMLFILE_HEAD: Final = """<!doctype html>
<html><head>
  <meta http-equiv="X-UA-Compatible" content="IE=edge" />
  <meta http-equiv="Content-Type" content="text/html; charset=UTF-8" />
</head><body><h2>Don't panic!</h2>
  <script>
    document.domain = document.domain;
    var c = parent.{callback};
    c.start();
    function p(d) {{c.message(d);}};
    window.onload = function() {{c.stop();}};
  </script>
"""


def htmlfile_prelude(callback: str) -> str:
    """The htmlfile page head for `callback`, padded past 1 KiB so that browsers render
    (and so run) each script as it arrives."""
    head = HTMLFILE_HEAD.format(callback=callback)
    return head + " " * max(0, 1024 - len(head)) + "\r\n"


#: sockjs-node's current page, which SockJS protocol suites check: the client first, then its
#: bootstrap. (The older page set `_sockjs_onload` for the client to call once loaded, a hook
#: sockjs-client keeps only for old servers.)
IFRAME_HTML: Final = """<!DOCTYPE html>
<html>
<head>
  <meta http-equiv="X-UA-Compatible" content="IE=edge" />
  <meta http-equiv="Content-Type" content="text/html; charset=UTF-8" />
  <script src="{sockjs_url}"></script>
  <script>
    document.domain = document.domain;
    SockJS.bootstrap_iframe();
  </script>
</head>
<body>
  <h2>Don't panic!</h2>
  <p>This is a SockJS hidden iframe. It's used for cross domain magic.</p>
</body>
</html>"""


def iframe_html(sockjs_url: str) -> str:
    """The iframe page that loads the SockJS client from `sockjs_url` (iframe transports)."""
    return IFRAME_HTML.format(sockjs_url=sockjs_url)
