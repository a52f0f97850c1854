"""Conformance with a real browser-side client: @stomp/stompjs 7.5.0 under Node.

Over WebSocket (the `ws` package, subprotocols v12/v11/v10.stomp) and over raw TCP (a net.Socket
dressed as a WebSocket, tests/node/tcp_websocket.mjs). The Node side is
tests/node/stompjs_scenario.mjs: it runs one scenario and prints what the client observed as
JSON; the assertions are all here.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from typing import Any

import pytest

from tests.node_support import NODE_DIR, require_node

from .conftest import FAST_HEARTBEAT, BrokerProcess, start_broker, stop_broker

SCRIPT = NODE_DIR / "stompjs_scenario.mjs"
RUN_TIMEOUT = 30

pytestmark = [pytest.mark.node, pytest.mark.timeout(120)]

TRANSPORTS = ["ws", "tcp"]


@pytest.fixture(scope="module")
def node() -> str:
    return require_node("@stomp/stompjs")


def run_scenario(
    node: str, broker: BrokerProcess, transport: str, scenario: str, destination: str, **extra: Any
) -> dict[str, Any]:
    """Run one scenario and return what the client observed; fails on a Node-side timeout."""
    options = {
        "scenario": scenario,
        "transport": transport,
        "url": broker.ws_url,
        "host": broker.host,
        "port": broker.port,
        "destination": destination,
        **extra,
    }
    proc = subprocess.run(
        [node, str(SCRIPT), json.dumps(options)],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    lines = proc.stdout.strip().splitlines()
    assert lines, f"no output from node (exit {proc.returncode}):\n{proc.stderr}"
    result: dict[str, Any] = json.loads(lines[-1])
    assert "fatal" not in result, f"{result['fatal']}\nobserved: {json.dumps(result, indent=1)}"
    assert proc.returncode == 0, proc.stderr
    assert result["ok"] is True
    return result


def _common_checks(result: dict[str, Any], transport: str) -> None:
    assert result["connected"]["headers"]["version"] == "1.2"
    if transport == "ws":
        assert result["subprotocol"] == "v12.stomp"
    assert result["stompErrors"] == []
    assert result["socketErrors"] == []
    # deactivate() sends DISCONNECT and, on its RECEIPT, closes the socket itself while the broker
    # closes too: whichever close handshake starts first decides the code, 1000 (the broker's) or
    # 1005 (stompjs closes without a status). Anything else (1006, 1011, ...) is a broken close.
    assert len(result["socketCloses"]) == 1, result["socketCloses"]
    assert result["socketCloses"][0]["code"] in (1000, 1005), result["socketCloses"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_connect_subscribe_send_receive(
    node: str, broker: BrokerProcess, transport: str, unique: str
) -> None:
    destination = f"/queue/stompjs-basic-{transport}-{unique}"
    result = run_scenario(node, broker, transport, "basic", destination)
    _common_checks(result, transport)
    assert result["receipts"] == ["sub-sub-basic", "send-1"]
    [message] = result["messages"]
    headers = message["headers"]
    assert bytes(message["bytes"]).decode() == "hello from stompjs \u2713"
    assert headers["destination"] == destination
    assert headers["subscription"] == "sub-basic"
    assert headers["message-id"]
    assert headers["x-custom"] == "yes"
    assert headers["x-odd"] == "a:b\nc\\d"  # escaped by stompjs, unescaped back by it


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_binary_bodies_with_nul(
    node: str, broker: BrokerProcess, transport: str, unique: str
) -> None:
    destination = f"/queue/stompjs-binary-{transport}-{unique}"
    result = run_scenario(node, broker, transport, "binary", destination)
    _common_checks(result, transport)
    raw, nul = result["messages"]
    assert bytes(raw["bytes"]) == bytes([0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF, 0x00, 0x41, 0x00])
    assert raw["headers"]["content-length"] == "9"
    assert raw["headers"]["content-type"] == "application/octet-stream"
    assert bytes(nul["bytes"]) == b"before\x00after"
    assert nul["headers"]["content-length"] == str(len(b"before\x00after"))


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_heartbeats_keep_a_silent_connection_up(
    node: str, fast_heartbeat_broker: BrokerProcess, transport: str, unique: str
) -> None:
    destination = f"/queue/stompjs-hb-{transport}-{unique}"
    client_hb = 500
    quiet_ms = 3000
    result = run_scenario(
        node,
        fast_heartbeat_broker,
        transport,
        "heartbeat",
        destination,
        heartbeat=client_hb,
        quietMs=quiet_ms,
    )
    _common_checks(result, transport)
    assert result["connected"]["headers"]["heart-beat"] == "{},{}".format(*FAST_HEARTBEAT)
    interval = max(client_hb, FAST_HEARTBEAT[0])
    # Server beats every `interval` ms while nothing else flows; allow for a late one or two.
    assert result["heartbeatsDuringQuiet"] >= quiet_ms // interval - 2, result
    assert result["heartbeatsLost"] == 0
    assert result["connectedAfterQuiet"] is True
    assert result["socketOpenAfterQuiet"] is True
    [message] = result["messages"]
    assert bytes(message["bytes"]) == b"still here"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_client_asking_one_second_notices_a_dead_server_within_three(
    node: str, transport: str, unique: str
) -> None:
    """Against the default settings, a client asking for 1 000 ms beats gets them (not the
    server's own pace), so it tells a paused server from a quiet one in about 3 s (stompjs
    declares it dead after two missed intervals, checked once an interval)."""
    broker = start_broker()  # its own: the test pauses it (SIGSTOP, SIGCONT)
    try:
        result = run_scenario(
            node,
            broker,
            transport,
            "deadServer",
            f"/queue/dead-{unique}",
            heartbeat=1000,
            pausePid=broker.process.pid,
        )
    finally:
        os.kill(broker.process.pid, signal.SIGCONT)
        stop_broker(broker)
    assert result["connected"]["headers"]["heart-beat"] == "1000,1000"
    assert result["heartbeatsLost"] == 1
    assert 1000 < result["lostAfterMs"] < 3500, result
