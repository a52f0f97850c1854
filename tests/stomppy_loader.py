"""Loads stomp.py (the PyPI client) under the alias `stomppy`, beside our own `stomp`.

Importing stomp.py: the PyPI package `stomp.py` installs a top-level package named `stomp`,
which is also the name of our library. Installed into the project venv it would shadow ours
everywhere but the repository root (`python -m stomp` would run stomp.py's CLI), so
scripts/test installs it apart, with `pip install --target .venv/stomppy` (`STOMPPY_DIR`).

Choice: load stomp.py in-process under the private alias `stomppy` (`_load_stomppy` below).
For the few milliseconds of that import, our `stomp*` entries are taken out of `sys.modules`
and stomp.py is imported from its own directory; its modules (which import each other absolutely as `stomp.x`) bind one another at
import time, so once they are loaded we put ours back and keep theirs only under the alias.
stomp.py imports nothing lazily at run time (checked for 9.0.0), so nothing later resolves
`stomp` to our package by mistake. This keeps the tests as ordinary Python calls on stomp.py's
API (a subprocess per client would need an RPC layer to drive acks and transactions step by
step), and renames nothing. The loader asserts it got stomp.py, by version, and not ours.

Shared by the stomp conformance tests and the chatd end-to-end tests.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

STOMPPY_VERSION = "9.0.0"
STOMPPY_DIR = Path(
    os.environ.get("CHATD_STOMPPY_DIR", Path(__file__).parents[1] / ".venv" / "stomppy")
)


def _load_stomppy() -> ModuleType:
    found = [
        d for d in importlib.metadata.distributions(path=[str(STOMPPY_DIR)]) if d.name == "stomp.py"
    ]
    assert found, f"stomp.py is not installed in {STOMPPY_DIR} (scripts/test installs it)"
    dist = found[0]
    assert dist.version == STOMPPY_VERSION, f"stomp.py {dist.version} installed"
    if str(STOMPPY_DIR) not in sys.path:
        sys.path.append(
            str(STOMPPY_DIR)
        )  # its own dependencies (websocket-client, docopt-ng); last, so ours wins for `stomp`
    init = Path(str(dist.locate_file("stomp/__init__.py")))
    ours = {
        name: mod
        for name, mod in sys.modules.items()
        if name == "stomp" or name.startswith("stomp.")
    }
    for name in ours:
        del sys.modules[name]
    try:
        spec = importlib.util.spec_from_file_location(
            "stomp", init, submodule_search_locations=[str(init.parent)]
        )
        assert spec is not None
        assert spec.loader is not None
        package = importlib.util.module_from_spec(spec)
        sys.modules["stomp"] = package
        spec.loader.exec_module(package)  # imports all of stomp.py's submodules
    finally:
        theirs = [name for name in sys.modules if name == "stomp" or name.startswith("stomp.")]
        for name in theirs:
            mod = sys.modules.pop(name)
            sys.modules["stomppy" + name.removeprefix("stomp")] = mod
        sys.modules.update(ours)
    assert Path(package.__file__ or "").parent == init.parent
    assert sys.modules.get("stomp") is ours.get("stomp")
    assert hasattr(package, "StompConnection12")
    return package


stomppy = _load_stomppy()
