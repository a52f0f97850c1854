"""A TCP forwarder that can be switched off and on: an outage of a service (PostgreSQL for
the fault tests, RabbitMQ for one soak instance) that the shared server never notices."""

from __future__ import annotations

import trio


class SwitchableProxy:
    """Forwards connections to `target`. `switch(False)` drops every link and closes new ones
    at once; `switch(True)` lets them through again. While `holding`, new connections are
    accepted and left silent; `freeze()` silences the open ones (a peer that stopped
    answering, the socket still up), until a switch drops them."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.up = True
        self.holding = False
        self.port = 0
        self._links: set[trio.CancelScope] = set()
        self._frozen: set[trio.CancelScope] = set()

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

    def freeze(self) -> None:
        """From now on, forward nothing on the open connections (new ones go through)."""
        self._frozen |= self._links

    async def _handle(self, client: trio.SocketStream) -> None:
        async with client:
            if not self.up:
                return
            with trio.CancelScope() as scope:
                self._links.add(scope)
                try:
                    if self.holding:
                        await trio.sleep_forever()
                    upstream = await trio.open_tcp_stream(*self.target)
                    async with upstream, trio.open_nursery() as nursery:
                        nursery.start_soon(self._pump, client, upstream, scope)
                        nursery.start_soon(self._pump, upstream, client, scope)
                except OSError:
                    return  # the target is down: the client sees its connection closed
                finally:
                    self._links.discard(scope)
                    self._frozen.discard(scope)

    async def _pump(
        self, src: trio.SocketStream, dst: trio.SocketStream, link: trio.CancelScope
    ) -> None:
        try:
            while data := await src.receive_some(65536):
                if link in self._frozen:
                    await trio.sleep_forever()
                await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        link.cancel()
