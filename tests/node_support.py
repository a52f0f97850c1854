"""Running the Node.js clients of tests/node from pytest: find node and the npm packages a
scenario needs, run one scenario script and return the JSON report it prints last."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import trio

NODE_DIR = Path(__file__).resolve().parent / "node"


def require_node(*packages: str) -> str:
    """The node executable; fails the test (never skips) when node or a package is missing."""
    path = shutil.which("node")
    if path is None:
        pytest.fail("node is not on PATH (scripts/test installs the Node clients)")
    for package in packages:
        if not (NODE_DIR / "node_modules" / package).is_dir():
            pytest.fail(f"npm package {package} missing: run `npm install` in {NODE_DIR}")
    return path


async def run_scenario(
    node: str, script: str, argument: dict[str, Any], *, seconds: float, context: str = ""
) -> dict[str, Any]:
    """Run ``tests/node/<script>`` with `argument` as JSON (without blocking a server running in
    this process) and return its report; a ``fatal`` entry or a failed exit fails the test,
    with `context` (e.g. where screenshots are) in the message."""
    with trio.fail_after(seconds):
        proc = await trio.run_process(
            [node, str(NODE_DIR / script), json.dumps(argument)],
            cwd=NODE_DIR,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    lines = proc.stdout.decode().strip().splitlines()
    assert lines, f"no output from node (exit {proc.returncode}):\n{proc.stderr.decode()}"
    result: dict[str, Any] = json.loads(lines[-1])
    assert "fatal" not in result, (
        f"{result['fatal']}\n{context}observed: {json.dumps(result, indent=1)}"
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return result
