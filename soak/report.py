"""The checks of a soak run and the table that shows them; `checks` returns the rows and
whether all passed."""

from __future__ import annotations

import itertools
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from statistics import median

from soak.runner import Outcome, Sample
from soak.transports import WS

_SESSION = re.compile(r"session\.[0-9a-f-]{36}")  # one row per reason, not per session
FLAT = 0.10  # RSS and fds may grow at most this much after warm-up
GEN_CPU_MAX = 0.85  # each generator process must keep this much of a core free
LAG_P99_MAX = 1.0  # seconds: a third of the default heart-beat interval
STEADY_AFTER_FAULT = 15.0  # samples this long after a fault's recovery count as steady


@dataclass
class Row:
    check: str
    value: str
    ok: bool | None  # None: informational


def _delivery(o: Outcome) -> list[Row]:
    stored = {mid: (s, seq) for s, seq, mid, _ in o.rows}
    by_cmid = Counter(c for *_, c in o.rows)
    by_session: dict[str, set[str]] = defaultdict(set)
    for s, _seq, mid, _c in o.rows:
        by_session[s].add(mid)
    acks = o.stats.acks
    not_stored = sum(a.message_id not in stored for a in acks.values())
    twice = sum(n > 1 for n in by_cmid.values())
    lost = sum(len(by_session[c.session] - c.seen.keys()) for c in o.clients)
    phantom = sum(len(c.seen.keys() - stored.keys()) for c in o.clients)
    reordered = sum(c.reordered for c in o.clients)
    replayed = sum(c.duplicates for c in o.clients)
    copies = sum(len(by_session[c.session]) for c in o.clients)
    pending = sum(c.pending for c in o.clients)
    return [
        Row(
            "messages acknowledged",
            f"{len(acks)} ({len(o.rows)} stored, {pending} intents never acknowledged)",
            pending == 0,
        ),
        Row("acknowledged but not stored", str(not_stored), not_stored == 0),
        Row("stored more than once (clientMessageId)", str(twice), twice == 0),
        Row(
            "lost: stored, not delivered to a subscriber of its session",
            f"{lost} of {copies} deliveries",
            lost == 0,
        ),
        Row("delivered but never stored", str(phantom), phantom == 0),
        Row("reordered (per-session order after dedupe by id)", str(reordered), reordered == 0),
        Row("duplicate frames dropped by id (replays after resume)", str(replayed), None),
        Row("clients still missing messages at the end", str(o.unsettled), o.unsettled == 0),
    ]


def _sends(o: Outcome) -> list[Row]:
    s = o.stats
    lat = sorted(a.latency for a in s.acks.values())

    def p(q: float) -> str:
        return f"{lat[min(len(lat) - 1, int(q * len(lat)))] * 1000:.0f} ms" if lat else "-"

    refused = sum(s.refused.values())
    return [
        Row(
            "send rate achieved",
            f"{len(s.acks) / max(1.0, o.sending_seconds):.1f} msg/s "
            f"(offered {o.options.rate:g}; {s.skipped} offers skipped: client busy)",
            None,
        ),
        Row("send to ack (retries included)", f"p50 {p(0.5)}, p99 {p(0.99)}, max {p(1.0)}", None),
        Row(
            "refused for good (not 429/503)",
            f"{refused} {dict(s.refused)}" if refused else "0",
            refused == 0,
        ),
        Row("refused busy, retried (429/503)", f"{sum(s.busy.values())} {dict(s.busy)}", None),
        Row("sends repeated after no answer", str(s.unanswered), None),
    ]


def _faults(o: Outcome) -> list[Row]:
    rows = []
    limit = max(o.options.fault_every, 60.0)
    for n, f in enumerate(o.faults, 1):
        ok = f.sends_ok is not None and f.drained is not None
        took = f.restored - f.started
        sends = "never" if f.sends_ok is None else f"{f.sends_ok:.1f} s"
        drained = "never" if f.drained is None else f"{f.drained:.1f} s"
        rows.append(
            Row(
                f"fault {n}: {f.name} ({f.target})",
                f"back after {took:.1f} s; then sends ok {sends}, backlog drained "
                f"{drained}; {f.errors_explained} ERROR lines in its window",
                ok,
            )
        )
    if not o.faults:
        rows.append(Row("faults", "none (run shorter than one fault interval)", None))
    rows.append(Row("recovery limit", f"{limit:g} s per fault", None))
    return rows


def _clients(o: Outcome) -> list[Row]:
    s = o.stats
    connected = sum(c.connected for c in o.clients)
    kinds = Counter(c.kind for c in o.clients)
    reconnected = sum(c.connects > 1 for c in o.clients)
    return [
        Row(
            "clients", f"{len(o.clients)}: " + ", ".join(f"{k} {v}" for k, v in kinds.items()), None
        ),
        Row("connected at the end", f"{connected}/{len(o.clients)}", connected == len(o.clients)),
        Row(
            "clients that reconnected",
            f"{reconnected} ({sum(s.disconnects.values())} disconnects: {dict(s.disconnects)})",
            None,
        ),
        Row("server ERROR frames in fault windows", str(dict(_frames(o, inside=True))), None),
        Row(
            "server ERROR frames outside fault windows, WebSocket clients",
            str(dict(_frames(o, inside=False, sockjs=False))),
            not _frames(o, inside=False, sockjs=False),
        ),
        # A SockJS client's heart-beat is an HTTP request of its own: on a loaded machine,
        # after a pause, it can wait behind hundreds of others for longer than the server's
        # grace (1.5 intervals). Shown, not judged.
        Row(
            "server ERROR frames outside fault windows, SockJS clients",
            str(dict(_frames(o, inside=False, sockjs=True))),
            None,
        ),
    ]


def _in_window(o: Outcome, at: float) -> bool:
    """Whether monotonic time `at` falls in a fault's window (start to recovery + 10 s)."""
    return any(
        f.started - 1 <= at <= f.restored + max(f.sends_ok or 30.0, f.drained or 30.0) + 10
        for f in o.faults
    )


def _frames(o: Outcome, *, inside: bool, sockjs: bool | None = None) -> Counter[str]:
    return Counter(
        f"{_SESSION.sub('session.{id}', message)} (chatd-{inst + 1}, {kind})"
        for at, message, inst, kind in o.stats.error_frames
        if _in_window(o, at) == inside and (sockjs is None or (kind != WS) == sockjs)
    )


def diagnostics(o: Outcome) -> dict[str, object]:
    """What a failed run needs looked at, for the run's folder: each client missing
    messages (which seqs, its transport, instance and connection history) and every ERROR
    frame, with times relative to the start of the load and the faults beside them."""
    t0 = o.sending_started
    by_session: dict[str, dict[str, int]] = defaultdict(dict)
    for s, seq, mid, _c in o.rows:
        by_session[s][mid] = seq
    missing = []
    for c in o.clients:
        lost = sorted(seq for mid, seq in by_session[c.session].items() if mid not in c.seen)
        if lost:
            missing.append(
                {
                    "client": c.index,
                    "kind": c.kind,
                    "instance": c.instance,
                    "session": c.session,
                    "missing_seqs": lost,
                    "last_seq": c.last_seq,
                    "connected": c.connected,
                    "history": [(round(t - t0, 1), what) for t, what in c.history],
                    "arrivals": [
                        (round(t - t0, 2), n, seq) for t, n, seq in c.arrivals if seq >= lost[0] - 3
                    ],
                }
            )
    return {
        "faults": [
            (round(f.started - t0, 1), round(f.restored - t0, 1), f.name, f.target)
            for f in o.faults
        ],
        "missing": missing,
        "error_frames": [(round(t - t0, 1), m, i, k) for t, m, i, k in o.stats.error_frames],
    }


def _steady(o: Outcome, sample: Sample) -> bool:
    return not any(
        f.started - 1
        <= sample.at
        <= f.restored + STEADY_AFTER_FAULT + max(f.sends_ok or 30.0, f.drained or 30.0)
        for f in o.faults
    )


def _resources(o: Outcome) -> list[Row]:
    rows = []
    by_pid: dict[tuple[int, int], list[Sample]] = defaultdict(list)
    for s in o.samples:
        by_pid[(s.instance, s.pid)].append(s)
    for (inst, pid), samples in sorted(by_pid.items()):
        first_at = samples[0].at
        steady = [s for s in samples if s.at >= first_at + o.options.warmup and _steady(o, s)]
        name = o.instances[inst].name
        if len(steady) < 3:
            rows.append(
                Row(
                    f"{name} pid {pid}: RSS / fds",
                    f"{len(samples)} samples, too few steady ones after warm-up to judge "
                    f"(RSS {samples[-1].rss / 2**20:.0f} MiB, fds {samples[-1].fds})",
                    None,
                )
            )
            continue
        k = max(1, len(steady) // 4)
        rss0, rss1 = median(s.rss for s in steady[:k]), median(s.rss for s in steady[-k:])
        fd0, fd1 = median(s.fds for s in steady[:k]), median(s.fds for s in steady[-k:])
        grow_rss, grow_fd = rss1 / rss0 - 1, fd1 / fd0 - 1
        rows.append(
            Row(
                f"{name} pid {pid}: RSS after warm-up",
                f"{rss0 / 2**20:.0f} -> {rss1 / 2**20:.0f} MiB ({grow_rss:+.1%}, "
                f"{len(steady)} steady samples)",
                grow_rss <= FLAT,
            )
        )
        rows.append(
            Row(
                f"{name} pid {pid}: open fds after warm-up",
                f"{fd0:.0f} -> {fd1:.0f} ({grow_fd:+.1%})",
                grow_fd <= FLAT,
            )
        )
    for inst in range(len(o.instances)):
        mine = [s for s in o.samples if s.instance == inst]
        cpu = sum(_cpu_between(a, b) for a, b in itertools.pairwise(mine) if a.pid == b.pid)
        span = sum(b.at - a.at for a, b in itertools.pairwise(mine) if a.pid == b.pid)
        gauge = [s.backlog for s in mine if s.backlog is not None]
        rows.append(
            Row(
                f"{o.instances[inst].name}: CPU, own delivery backlog",
                f"{cpu / max(span, 1e-9):.0%} of a core; chatd_delivery_backlog max "
                f"{max(gauge, default=0)}, last {gauge[-1] if gauge else '-'}",
                None,
            )
        )
    backlog = [b for _, b in o.backlog]
    if backlog:
        rows.append(
            Row(
                "outbox backlog (sampled every 10 s)",
                f"median {median(backlog):.0f}, max {max(backlog)}, last {backlog[-1]}",
                None,
            )
        )
    return rows


def _cpu_between(a: Sample, b: Sample) -> float:
    return b.cpu - a.cpu


def _logs(o: Outcome) -> list[Row]:
    unexplained = []
    for inst, when, line in o.errors:
        fault = next((f for f in o.faults if f.started_unix - 1 <= when <= f.window_end_unix), None)
        if fault is None:
            unexplained.append(f"{inst}: {line}")
        else:
            fault.errors_explained += 1
    shown = "; ".join(sorted(set(unexplained))[:5])
    return [
        Row(
            "ERROR log lines not explained by a fault",
            f"{len(unexplained)}" + (f": {shown}" if shown else ""),
            not unexplained,
        )
    ]


def _generator(o: Outcome) -> list[Row]:
    """Each generator process must keep part of its core free and wake on time, or the run
    measures the generator: a late loop misses heart-beats and reads frames late."""
    shares = [cpu / max(1.0, o.sending_seconds) for cpu in o.gen_cpu]
    p99s, peak = [], 0.0
    for lag in o.loop_lag:
        ordered = sorted(lag) or [0.0]
        p99s.append(ordered[int(0.99 * (len(ordered) - 1))])
        peak = max(peak, ordered[-1])
    return [
        Row(
            f"load generator: {len(shares)} processes, CPU each (of a core)",
            ", ".join(f"{s:.0%}" for s in shares) + f" (total {sum(shares):.0%})",
            all(s < GEN_CPU_MAX for s in shares),
        ),
        Row(
            "load generator: event-loop lag p99 each",
            ", ".join(f"{p * 1000:.0f} ms" for p in p99s) + f" (max {peak * 1000:.0f} ms)",
            all(p < LAG_P99_MAX for p in p99s),
        ),
    ]


def checks(o: Outcome) -> tuple[list[Row], bool]:
    """Every row of the table; the second value is True when no check failed."""
    logs = _logs(o)  # first: it counts each fault's explained lines
    rows = [
        *_delivery(o),
        *_sends(o),
        *_faults(o),
        *_clients(o),
        *_resources(o),
        *logs,
        *_generator(o),
    ]
    return rows, all(r.ok is not False for r in rows)


def table(o: Outcome, rows: list[Row]) -> str:
    opt = o.options
    head = (
        f"soak: {opt.clients} clients, {opt.rate:g} msg/s offered, {opt.minutes:g} min, "
        f"a fault every {opt.fault_every:g} s (hold {opt.hold:g} s, pause {opt.pause:g} s), "
        f"heart-beats every {opt.heartbeat_ms} ms from the server, "
        f"{opt.client_heartbeat_ms} ms from clients, Redis {'on' if o.redis else 'off'}, "
        f"{len(o.instances)} instances"
    )
    width = max(len(r.check) for r in rows)
    lines = [
        head,
        "",
        f"| {'check'.ljust(width)} | result | value |",
        f"|{'-' * (width + 2)}|--------|-------|",
    ]
    for r in rows:
        mark = "info" if r.ok is None else ("ok" if r.ok else "FAIL")
        lines.append(f"| {r.check.ljust(width)} | {mark:6} | {r.value} |")
    return "\n".join(lines)
