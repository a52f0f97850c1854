"""Running the app on Hypercorn's trio worker with chatd's settings.

The supervisor calls `serve_http` as a part; this module is the only place that knows
Hypercorn's configuration object, so its knobs (keep-alive, graceful drain, logging) are
mapped from `chatd.config` in one spot.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import hypercorn.config
import hypercorn.trio
import trio
from quart_trio import QuartTrio

from chatd.config import Config
from chatd.http.keepalive import lock_connection_close


def hypercorn_config(config: Config) -> hypercorn.config.Config:
    """Hypercorn settings for `config`: bind, keep-alive timeout, drain time, our loggers."""
    host, port = config.server.bind_address
    hconfig = hypercorn.config.Config()
    hconfig.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    hconfig.keep_alive_timeout = config.server.keepalive_timeout
    hconfig.graceful_timeout = config.server.shutdown_grace
    hconfig.accesslog = None
    # Hypercorn's INFO lines ("Running on ...") would duplicate chatd's one ready line.
    error_logger = logging.getLogger("hypercorn.error")
    error_logger.setLevel(max(logging.WARNING, logging.getLogger("chatd").getEffectiveLevel()))
    hconfig.errorlog = error_logger
    hconfig.include_server_header = False
    return hconfig


async def serve_http(
    app: QuartTrio,
    config: Config,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]],
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` until `shutdown_trigger` returns, then drain for ``shutdown_grace``.

    Reports the bound addresses (``["http://127.0.0.1:8080"]``) through `task_status`.
    After the trigger, no new connection is accepted, idle keep-alive connections close at
    once and in-flight requests get until the grace deadline.
    """
    lock_connection_close()
    await hypercorn.trio.serve(
        app, hypercorn_config(config), shutdown_trigger=shutdown_trigger, task_status=task_status
    )
