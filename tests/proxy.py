"""A TCP forwarder that can be switched off and on: an outage of a service (PostgreSQL for
the fault tests, RabbitMQ for one soak instance) that the shared server never notices."""

from __future__ import annotations

import functools
import signal
import subprocess
import sys
from pathlib import Path

import trio

#: The repository (``tests`` must be importable by the proxy process).
ROOT = Path(__file__).resolve().parent.parent


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


class ProxyProcess:
    """A `SwitchableProxy` in a process of its own (``python -m tests.proxy HOST PORT``),
    switched by signals: the soak's load generator keeps one core busy, and a proxy sharing
    its event loop starved the link it stood for (RabbitMQ's answers waited seconds)."""

    def __init__(self, process: trio.Process, port: int) -> None:
        self.process = process
        self.port = port

    @classmethod
    async def start(cls, nursery: trio.Nursery, target: tuple[str, int]) -> ProxyProcess:
        """Start the process in `nursery` (stopped with it); return once it listens."""
        process: trio.Process = await nursery.start(
            functools.partial(
                trio.run_process,
                [sys.executable, "-m", "tests.proxy", target[0], str(target[1])],
                stdout=subprocess.PIPE,
                cwd=ROOT,
                check=False,
            )
        )
        assert process.stdout is not None
        line = b""
        with trio.fail_after(30):
            while not line.endswith(b"\n"):
                chunk = await process.stdout.receive_some(64)
                if not chunk:
                    raise RuntimeError("the proxy process ended before it listened")
                line += chunk
        return cls(process, int(line))

    def switch(self, up: bool) -> None:
        self.process.send_signal(signal.SIGUSR2 if up else signal.SIGUSR1)


async def _serve(target: tuple[str, int]) -> None:
    proxy = SwitchableProxy(target)
    with trio.open_signal_receiver(signal.SIGUSR1, signal.SIGUSR2) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(proxy.run)
            print(proxy.port, flush=True)
            async for signum in signals:
                proxy.switch(signum == signal.SIGUSR2)


if __name__ == "__main__":
    trio.run(_serve, (sys.argv[1], int(sys.argv[2])))
