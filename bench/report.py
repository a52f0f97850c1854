"""The closing table (Markdown, printed and written to bench-results/latest.md) and the raw
results (bench-results/latest.json)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Result = dict[str, Any]
COLUMNS = [("chatd", "tcp"), ("chatd", "ws"), ("rabbitmq", "tcp"), ("rabbitmq", "ws")]


@dataclass(frozen=True)
class Row:
    scenario: str
    label: str
    metric: str
    value: Callable[[Result], Any]
    better: str = ""  # "high" / "low": a ratio chatd/RabbitMQ is printed; "" for none
    target: str = ""


def _cpu(r: Result) -> str:
    other = r.get("other_cpu_pct")
    text = f"{r.get('gen_cpu_pct')}% / {r.get('broker_cpu_pct')}%"
    return text + (f" / {other}%" if other is not None else "")


def _checks(r: Result) -> str:
    return f"{r['missing']} / {r['gaps']} / {r['reordered']} / {r['errors'] + r['closed']}"


CPU = "CPU gen / broker / other"
ROWS = [
    Row(
        "fanout",
        "a. fan-out 1 topic x 100 subs",
        "deliveries/s",
        lambda r: r["delivered_per_s"],
        "high",
        ">= 50 000",
    ),
    Row("fanout", "", CPU, _cpu),
    Row(
        "topics",
        "b. 100 topics x 8 subs @ 5 000 msg/s",
        "sent msg/s",
        lambda r: r["sent_per_s"],
        "high",
    ),
    Row("topics", "", "deliveries/s", lambda r: r["delivered_per_s"], "high", "40 000 offered"),
    Row("topics", "", "latency p50 ms", lambda r: r["p50_ms"], "low"),
    Row("topics", "", "latency p99 ms", lambda r: r["p99_ms"], "low"),
    Row("topics", "", "missing / gaps / reordered / errors", _checks),
    Row("topics", "", CPU, _cpu),
    Row(
        "overload",
        "b. overload ramp (100 x 8)",
        "max clean deliveries/s",
        lambda r: r["max_clean_deliveries_per_s"],
        "high",
        ">= 13 000",
    ),
    Row("overload", "", "at offered msg/s", lambda r: r["max_clean_msg_per_s"], "high"),
    Row("overload", "", "p99 ms at that rate", lambda r: r["max_clean_p99_ms"], "low"),
    Row("overload", "", CPU, _cpu),
    Row("latency", "c. 1 000 msg/s x 8 subs", "latency p50 ms", lambda r: r["p50_ms"], "low"),
    Row("latency", "", "latency p99 ms", lambda r: r["p99_ms"], "low", "<= 5 ms"),
    Row("latency", "", "missing / gaps / reordered / errors", _checks),
    Row("latency", "", CPU, _cpu),
    Row(
        "pingpong",
        "d. ping-pong",
        "round trips/s",
        lambda r: r["round_trips_per_s"],
        "high",
        ">= 5 000",
    ),
    Row("pingpong", "", "RTT p99 ms", lambda r: r["p99_ms"], "low"),
    Row("pingpong", "", CPU, _cpu),
    Row("idle", "e. idle WebSocket connections", "connections", lambda r: r["connections"]),
    Row(
        "idle",
        "",
        "broker RSS KB / connection",
        lambda r: r["kb_per_connection"],
        "low",
        "<= 50 KB",
    ),
    Row(
        "idle",
        "",
        "connects/s (CPU while connecting)",
        lambda r: f"{r['connects_per_s']} ({_cpu(r)})",
    ),
]


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value >= 1000:
        value = round(value)
    if isinstance(value, int):
        return f"{value:,}".replace(",", " ")
    return str(value)


def _ratio(a: Any, b: Any) -> str:
    if not isinstance(a, int | float) or not isinstance(b, int | float) or not b:
        return "-"
    return f"{a / b:.3g}"


def _cell(results: Result, row: Row, target: str, transport: str) -> Any:
    r = results.get(row.scenario, {}).get(target, {}).get(transport)
    if r is None:
        return None
    if "error" in r:
        return "failed"
    try:
        return row.value(r)
    except (KeyError, TypeError):
        return None


def broker_table(results: Result) -> str:
    head = [
        "scenario",
        "metric",
        *[f"{t} {x}" for t, x in COLUMNS],
        "chatd/rmq tcp",
        "chatd/rmq ws",
        "target (chatd)",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in ROWS:
        if row.scenario not in results:
            continue
        cells = [_cell(results, row, t, x) for t, x in COLUMNS]
        ratios = [_ratio(cells[i], cells[i + 2]) if row.better else "" for i in (0, 1)]
        lines.append(
            "| "
            + " | ".join([row.label, row.metric, *map(_fmt, cells), *ratios, row.target])
            + " |"
        )
    return "\n".join(lines)


def send_table(send: Result) -> str:
    if "http" not in send:
        return f"send benchmark: {send.get('skipped') or send.get('error')}"
    h, p = send["http"], send["pgbench"]
    head = ["", "clients", "per s", "p50 ms", "p99 ms", "errors", "CPU gen / server"]
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
        f"| chatd POST /api/chat/message | {h['clients']} | {_fmt(h['sends_per_s'])} | "
        f"{h['p50_ms']} | {h['p99_ms']} | {h['errors']} | "
        f"{h['gen_cpu_pct']}% / {h['server_cpu_pct']}% |",
    ]
    if "tps" in p:
        lines.append(
            f"| pgbench, same transaction | {p['clients']} | {_fmt(p['tps'])} | "
            f"{p['p50_ms']} | {p['p99_ms']} | {p['failed']} | - |"
        )
    else:
        lines.append(f"| pgbench | - | {p.get('error') or p.get('skipped')} | | | | |")
    lines.append(f"\nchatd / pgbench: **{_fmt(send.get('ratio_pct'))} %** (target >= 50 %)")
    lines.append(
        "\nchatd serve pinned to core 0 (pool of 10 connections), HTTP clients and "
        "pgbench on core 1, PostgreSQL not pinned; each client sends in its own "
        "session; pgbench uses as many connections as chatd's pool."
    )
    return "\n".join(lines)


def e2e_table(e2e: Result) -> str:
    """One row per offered rate: what got through and how long the POST -> MESSAGE took."""
    if "runs" not in e2e:
        return f"end-to-end benchmark: {e2e.get('skipped') or e2e.get('error')}"
    stomp = e2e.get("via") == "stomp"
    head = [
        "instances",
        "offered/s",
        "accepted/s" if stomp else "POSTs/s",
        "send lag p99 ms" if stomp else "POST p50/p99 ms",
        "deliveries/s",
        "topic p50 / p99 / max ms",
        "user queue p50 / p99 ms",
        "missing",
        "outbox backlog max / left",
        "CPU server / gen",
        "server CPU us/msg",
        "refused",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in e2e["runs"]:
        lines.append(
            f"| {e2e['instances']} | {_fmt(r['offered_per_s'])} | {_fmt(r['posted_per_s'])} | "
            + (
                f"{r['send_lag_p99_ms']} | "
                if stomp
                else f"{r['post_p50_ms']} / {r['post_p99_ms']} | "
            )
            + f"{_fmt(r['delivered_per_s'])} | "
            f"{r['topic_p50_ms']} / {r['topic_p99_ms']} / {r['topic_max_ms']} | "
            f"{r['user_p50_ms']} / {r['user_p99_ms']} | {r['missing']} | "
            f"{r['backlog_max']} / {r['backlog_left']} | "
            f"{r['server_cpu_pct']}% / {r['gen_cpu_pct']}% | "
            f"{r.get('server_cpu_us_per_msg', '-')} | "
            f"{sum(v for k, v in r['statuses'].items() if k not in ('200', '201'))} |"
        )
    how = "SENDs /app/chat.send on its WebSocket" if stomp else "POSTs /api/chat/message"
    lines.append(
        f"\n{e2e['pairs']} pairs of users, each user one WebSocket on /ws subscribed to "
        f"its session topic and /user/queue/messages; the first of each pair {how} at "
        "the offered rate (all pairs together). Latency: from the start of the send to "
        "the MESSAGE on each participant's socket. Targets (issue 11): STOMP p99 <= "
        "10 ms at 1 000 msg/s, REST p99 <= 10 ms at 500 msg/s."
    )
    if cost := e2e.get("cost"):
        lines.append(
            f"\nServer CPU per request, one request at a time: GET /health/live "
            f"{cost['live_cpu_ms']} ms (Hypercorn + Quart + middleware: the floor of "
            f"any REST call), POST /api/chat/message {cost['post_cpu_ms']} ms (the "
            "send, its outbox round and deliveries included)."
        )
    return "\n".join(lines)


def batch_table(batch: Result) -> str:
    """One row per batch size: messages stored and delivered per second, and their cost."""
    if "runs" not in batch:
        return f"batch benchmark: {batch.get('skipped') or batch.get('error')}"
    head = [
        "messages / request",
        "senders",
        "requests/s",
        "stored msg/s",
        "delivered msg/s",
        "request p50 / p99 ms",
        "server CPU",
        "server CPU us/msg",
        "not 2xx",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in batch["runs"]:
        lines.append(
            f"| {r['batch']} | {r['clients']} | {_fmt(r['requests_per_s'])} | "
            f"{_fmt(r['stored_per_s'])} | {_fmt(r['delivered_per_s'])} | "
            f"{r['p50_ms']} / {r['p99_ms']} | {r['server_cpu_pct']}% | "
            f"{r['server_cpu_us_per_msg']} | "
            f"{sum(v for k, v in r['statuses'].items() if k not in ('200', '201'))} |"
        )
    lines.append(
        "\nEach sender POSTs /api/chat/messages back to back in its own session; the "
        "session's peer counts the MESSAGE frames on its topic WebSocket (delivered). "
        "chatd serve pinned to core 0 with direct delivery, the generator on core 1."
    )
    return "\n".join(lines)


#: The reconnect table: (column, its cell from the round's name and figures).
_RECONNECT_COLUMNS: list[tuple[str, Callable[[str, Result], Any]]] = [
    ("round", lambda name, r: name),
    ("clients", lambda name, r: r["clients"]),
    ("subscribed", lambda name, r: r["subscribed"]),
    ("failed", lambda name, r: r["failures"]),
    ("storm s", lambda name, r: r["seconds"]),
    ("per client p50 / p99 / max s", lambda name, r: f"{r['p50_s']} / {r['p99_s']} / {r['max_s']}"),
    ("server CPU", lambda name, r: f"{r['broker_cpu_pct']}%"),
    ("server CPU us/client", lambda name, r: _fmt(r["server_cpu_us_per_client"])),
    ("other CPU (RabbitMQ, PostgreSQL)", lambda name, r: f"{r['other_cpu_pct']}%"),
]


def reconnect_table(reconnect: Result) -> str:
    """One row per round: how long the clients took to be back, and what it cost."""
    if "fresh" not in reconnect:
        return f"reconnect benchmark: {reconnect.get('error')}"
    rows = [[column for column, _ in _RECONNECT_COLUMNS], ["---"] * len(_RECONNECT_COLUMNS)]
    rows += [
        [str(cell(name, r)) for _, cell in _RECONNECT_COLUMNS] for name, r in reconnect.items()
    ]
    note = (
        "\nEvery client opens /ws, CONNECTs (RS256 token), subscribes to its session topic "
        "with x-since-seq and to three user queues, all at once, until the RECEIPT. fresh: "
        "the instance holds no RabbitMQ binding yet (as after a restart); again: the "
        "bindings of the first round still linger. chatd pinned to core 0."
    )
    return "\n".join("| " + " | ".join(row) + " |" for row in rows) + "\n" + note


def _runs(title: str, runs: Result, label: str, note: str) -> list[str]:
    """A section of end-to-end tables, one per labelled run, then what they mean."""
    parts = ["", f"## {title}", ""]
    for name, run in runs.items():
        parts += [label.format(name), "", e2e_table(run), ""]
    return [*parts, note]


def render(report: Result) -> str:
    meta = report["meta"]
    parts = [f"# chatd benchmark ({meta['mode']} run, {meta['started']})", ""]
    parts += [f"- {note}" for note in report["notes"]]
    if report.get("broker"):
        parts += ["", "## Broker (issue 2)", "", broker_table(report["broker"])]
    if report.get("send"):
        parts += ["", "## Send (issue 3)", "", send_table(report["send"])]
    if report.get("e2e"):
        parts += ["", "## End to end (issue 4)", "", e2e_table(report["e2e"])]
    if report.get("e2e-stomp"):
        parts += ["", "## End to end over STOMP (issue 11)", "", e2e_table(report["e2e-stomp"])]
    if report.get("workers"):
        parts += _runs(
            "Workers (issue 11)",
            report["workers"],
            "**--workers {}**",
            "The same STOMP load through RabbitMQ (confirms): `--workers 1` is one "
            "process pinned to core 0; `--workers 2` is two worker processes, not "
            "pinned, so they share both cores with the load generator: the figure "
            "shows what a second core adds on this 2-core machine, minus what the "
            "generator takes of it.",
        )
    if report.get("instances"):
        parts += _runs(
            "Several instances (issue 5)",
            report["instances"],
            "**{}**",
            "Same load as the end-to-end runs, at 500 msg/s: one instance "
            "in-process, one instance publishing through RabbitMQ (confirms) and "
            "consuming its own queue, two instances with the two users of each pair "
            "on different instances, so every message crosses RabbitMQ. Every "
            "instance is pinned to core 0 (the load generator has core 1): two "
            "instances share one core, so the figure shows the relay's cost, not "
            "added capacity.",
        )
    if report.get("batch"):
        parts += ["", "## Batch send (issue 17)", "", batch_table(report["batch"])]
    if report.get("reconnect"):
        parts += ["", "## Reconnect storm (issue 22)", "", reconnect_table(report["reconnect"])]
    return "\n".join(parts) + "\n"


def write(report: Result, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    text = render(report)
    (out / "latest.md").write_text(text)
    (out / "latest.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    stamp = report["meta"]["started"].replace(":", "").replace("-", "")
    (out / f"bench-{stamp}.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    return out / "latest.md"
