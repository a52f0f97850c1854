"""A TCP forwarder that can be switched off and on: an outage of a service (PostgreSQL for
the fault tests, RabbitMQ for one soak instance) that the shared server never notices."""

from __future__ import annotations

import trio


class SwitchableProxy:
    """Forwards connections to `target`. `switch(False)` drops every link and closes new ones
    at once; `switch(True)` lets them through again."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.up = True
        self.port = 0
        self._links: set[trio.CancelScope] = set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    def switch(self, up: bool) -> None:
        self.up = up
        if not up:
            for scope in list(self._links):
                scope.cancel()

    async def _handle(self, client: trio.SocketStream) -> None:
        async with client:
            if not self.up:
                return
            with trio.CancelScope() as scope:
                self._links.add(scope)
                try:
                    upstream = await trio.open_tcp_stream(*self.target)
                    async with upstream, trio.open_nursery() as nursery:
                        nursery.start_soon(self._pump, client, upstream, nursery)
                        nursery.start_soon(self._pump, upstream, client, nursery)
                except OSError:
                    return  # the target is down: the client sees its connection closed
                finally:
                    self._links.discard(scope)

    @staticmethod
    async def _pump(src: trio.SocketStream, dst: trio.SocketStream, nursery: trio.Nursery) -> None:
        try:
            while data := await src.receive_some(65536):
                await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        nursery.cancel_scope.cancel()
