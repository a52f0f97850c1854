"""`chatd.domain.lru.Lru` against a reference model: the least recently used entry goes first."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from chatd.domain.lru import Lru

OPS = st.lists(
    st.tuples(st.sampled_from(["get", "put"]), st.integers(0, 6), st.integers()), max_size=60
)


@given(OPS, st.integers(1, 4))
def test_lru_keeps_the_most_recently_used(ops: list[tuple[str, int, int]], size: int) -> None:
    lru: Lru[int, int] = Lru(size)
    model: list[tuple[int, int]] = []  # least recently used first
    for op, key, value in ops:
        found = next((v for k, v in model if k == key), None)
        if op == "get":
            assert lru.get(key) == found
            if found is not None:
                model = [e for e in model if e[0] != key] + [(key, found)]
        else:
            lru.put(key, value)
            model = [e for e in model if e[0] != key] + [(key, value)]
            model = model[-size:]
        assert len(lru) == len(model)
    for key, value in model:
        assert lru.get(key) == value
