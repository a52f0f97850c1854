"""pgbench running chatd's one-message send transaction, statement for statement: the
baseline of issue 11's target "stored sends per second >= pgbench's rate for the same
transaction" (chatd itself now commits concurrent sends together, `Store.append_messages`):

    SELECT message by (sender, client id)          -- idempotency check, autocommit
    BEGIN
    UPDATE chat_sessions ... next_seq + 1 RETURNING  -- the session row lock, the new seq
    INSERT INTO chat_messages ... RETURNING id
    3 x INSERT INTO chat_message_outbox              -- pipelined, as psycopg's executemany
    NOTIFY chatd_outbox
    COMMIT

Each pgbench client appends to its own session (like each HTTP client), created here with a
predictable id; the payload and destinations are copied from rows chatd itself wrote.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from bench.broker import percentiles
from bench.targets import GENERATOR_CORE, pinned

Result = dict[str, Any]
_SID = "('00000000-0000-4000-8000-' || lpad((:client_id)::text, 12, '0'))::uuid"
_EMAIL = "('pgbench' || :client_id || '@example.com')"
_CLIENT_MSG_ID = "('pgb-' || :client_id || '-' || :cid)"
_SEQ = "((:next_seq)::bigint - 1)"


def _fill(sql: str, *values: str) -> str:
    """`sql` with its %s placeholders replaced, in order, by `values`."""
    parts = sql.strip().split("%s")
    if len(parts) != len(values) + 1:
        raise ValueError(f"{len(parts) - 1} placeholders, {len(values)} values: {sql}")
    return "".join(p + v for p, v in zip(parts, [*values, ""], strict=True))


# The one-message bump and insert (chatd's statements before group commit).
BUMP_SEQ = """
UPDATE chat_sessions SET next_seq = next_seq + 1,
                         last_activity_at = GREATEST(last_activity_at, %s)
WHERE id = %s RETURNING next_seq"""
INSERT_MESSAGE = """
INSERT INTO chat_messages (id, session_id, seq, sender_id, sender_email, sender_display_name,
                           content, client_msg_id, sent_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (sender_email, client_msg_id) DO NOTHING
RETURNING id"""


def script() -> str:
    """The pgbench script of one send."""
    from chatd.storage import postgres_sql as q
    from chatd.storage.base import OUTBOX_CHANNEL

    outbox = [
        _fill(
            q.INSERT_OUTBOX,
            ":id",
            _SID,
            _SEQ,
            "'message'",
            f":dest{k}",
            ":payload",
            "now()",
            "now()",
        )
        + ";"
        for k in range(3)
    ]
    return "\n".join(
        [
            r"\set cid random(1, 9000000000000000)",
            _fill(q.MESSAGE_BY_CLIENT_ID, _EMAIL, _CLIENT_MSG_ID) + ";",
            "BEGIN;",
            _fill(BUMP_SEQ, "now()", _SID) + r" \gset",
            _fill(
                INSERT_MESSAGE,
                "gen_random_uuid()",
                _SID,
                _SEQ,
                "'pgbench-profile'",
                _EMAIL,
                "'pgbench'",
                ":content",
                _CLIENT_MSG_ID,
                "now()",
            )
            + r" \gset",
            r"\startpipeline",
            *outbox,
            r"\endpipeline",
            f"NOTIFY {OUTBOX_CHANNEL};",
            "COMMIT;",
            "",
        ]
    )


def _setup(url: str, clients: int) -> dict[str, str]:
    """Sessions for the pgbench clients; the payload and destinations chatd wrote last."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO chat_sessions (id, intent, profile_lo, email_lo, name_lo, profile_hi,"
            " email_hi, name_hi, created_at, last_activity_at)"
            " SELECT ('00000000-0000-4000-8000-' || lpad(n::text, 12, '0'))::uuid, 'pgbench',"
            " 'pgbench-profile-' || n, 'pgbench' || n || '@example.com', 'pgbench',"
            " 'peer-profile-' || n, 'peer' || n || '@example.com', 'peer', now(), now()"
            " FROM generate_series(0, %s) AS n",
            (clients - 1,),
        )
        rows = conn.execute(
            "SELECT destination, payload::text FROM chat_message_outbox"
            " WHERE message_id = (SELECT message_id FROM chat_message_outbox"
            " WHERE message_id IS NOT NULL ORDER BY id DESC LIMIT 1) ORDER BY id"
        ).fetchall()
        content = conn.execute("SELECT content FROM chat_messages LIMIT 1").fetchone()
    if len(rows) != 3:
        rows = [(f"/topic/chat.{k}", '{"seq": 1, "content": "bench message"}') for k in range(3)]
    variables = {f"dest{k}": dest for k, (dest, _) in enumerate(rows)}
    variables["payload"] = rows[0][1]
    variables["content"] = content[0] if content else "bench message 1/1"
    return variables


def run_pgbench(url: str, workdir: Path, *, clients: int, seconds: float) -> Result:
    """tps and latency of the send transaction with `clients` connections for `seconds`."""
    tool = shutil.which("pgbench")
    if tool is None:
        return {"skipped": "pgbench not found"}
    path = workdir / "send.pgbench.sql"
    path.write_text(script())
    logs = workdir / "pgbench-log"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    cmd = [
        tool,
        "-n",
        "-M",
        "prepared",
        "-c",
        str(clients),
        "-j",
        "1",
        "-T",
        str(max(1, round(seconds))),
        "-f",
        str(path),
        "-l",
        f"--log-prefix={logs}/tx",
    ]
    for name, value in _setup(url, clients).items():
        cmd += ["-D", f"{name}={value}"]
    done = subprocess.run(
        [*pinned(cmd, GENERATOR_CORE), url],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=False,
    )
    (workdir / "pgbench.out").write_text(done.stdout + done.stderr)
    tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", done.stdout)
    failed = re.search(r"number of failed transactions: (\d+)", done.stdout)
    if done.returncode != 0 or tps is None:
        return {"error": (done.stderr or done.stdout).strip()[-300:]}
    latencies = [
        int(line.split()[2]) * 1000
        for log in logs.iterdir()
        for line in log.read_text().splitlines()
        if line.strip()
    ]
    return {
        "clients": clients,
        "tps": round(float(tps.group(1))),
        "failed": int(failed.group(1)) if failed else 0,
        **percentiles(latencies),
    }
