"""The publisher as a supervisor part: built from the components, started, stopped."""

from __future__ import annotations

from pathlib import Path

import trio

from chatd.config import Config, ServerConfig
from chatd.storage import Store
from chatd.supervisor import build_components, outbox_part

from .conftest import ANN, RecordingSink, send, sessions, wait_until


async def test_the_outbox_part_publishes_until_stopped(store: Store, tmp_path: Path) -> None:
    config = Config(server=ServerConfig(data_dir=tmp_path))  # dev keys land in tmp_path
    components = await build_components(config, store)
    sink = RecordingSink()
    part = outbox_part(components, sink)
    assert part.name == "outbox"
    [(session, _)] = await sessions(store, 1)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(part.run)
            await send(store, session, ANN, 2)
            await wait_until(lambda: len(sink.accepted) == 6)
            part.stop()  # run returns by itself: the nursery closes without a cancel
    assert await store.outbox_stats() == (0, 0)
