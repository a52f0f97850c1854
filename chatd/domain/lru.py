"""`Lru`: the bounded least-recently-used map of the send path's per-message look-ups.

cachetools' `LRUCache` (kept where its extras serve: TTLs, size functions) does its
bookkeeping in Python, a few microseconds per get and set; on the send path (the rate
limiter's user states, the session cache) that is paid several times per message. This is
the same policy on `OrderedDict`, whose recency moves are done in C.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Lru(Generic[K, V]):
    """At most `maxsize` entries; `get` and `put` make an entry the most recently used, and
    `put` past the bound forgets the least recently used one."""

    __slots__ = ("_items", "maxsize")

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.maxsize = maxsize
        self._items: OrderedDict[K, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: K) -> V | None:
        """The value of `key` (now most recently used), or None."""
        items = self._items
        value = items.get(key)
        if value is not None:
            items.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        """Remember `value` for `key` as the most recently used entry."""
        items = self._items
        items[key] = value
        items.move_to_end(key)
        if len(items) > self.maxsize:
            items.popitem(last=False)
