"""Micro-benchmark of the state-machine triggers: task inserts and transitions per second.

Usage: python tools/bench_transitions.py [N]   (default N = 20000)

Measures, on a fresh database in a temporary directory, with the kernel's own triggers:
  - inserting N tasks in one transaction (each writes its task_created event);
  - moving all N pending -> queued with one set-based UPDATE;
  - the rest of each task's life (queued -> running -> validating -> completed, with the worker
    going busy and idle: 5 transitions) in one transaction per task, as a naive scheduler would.
`orch bench` (issue 6) will report the same pattern as ratios against references.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kernel.store import db, schema  # noqa: E402


def main(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        conn = schema.connect(Path(tmp) / "kernel.db", create=True)
        t0 = time.perf_counter()
        with db.write_tx(conn):
            conn.execute("INSERT INTO workstream (workstream_id) VALUES ('ws')")
            conn.executemany("INSERT INTO task (task_id, workstream_id) VALUES (?, 'ws')",
                             [(f"t{i}",) for i in range(n)])
            conn.execute("INSERT INTO worker (worker_id) VALUES ('w')")
            conn.execute("UPDATE worker SET state = 'idle', "
                         "transition_trigger = 'registration_complete'")
        insert = time.perf_counter() - t0
        t0 = time.perf_counter()
        with db.write_tx(conn):
            conn.execute("UPDATE task SET state = 'queued', "
                         "transition_trigger = 'scheduler_assigned'")
        queue = time.perf_counter() - t0
        t0 = time.perf_counter()
        for i in range(n):
            task = (f"t{i}",)
            with db.write_tx(conn):
                conn.execute("UPDATE worker SET state = 'busy', transition_trigger = "
                             "'task_assigned' WHERE worker_id = 'w'")
                conn.execute("UPDATE task SET state = 'running', transition_trigger = "
                             "'worker_started', worker_id = 'w' WHERE task_id = ?", task)
                conn.execute("UPDATE task SET state = 'validating', transition_trigger = "
                             "'execution_completed', worker_id = NULL WHERE task_id = ?", task)
                conn.execute("UPDATE worker SET state = 'idle', transition_trigger = "
                             "'task_completed' WHERE worker_id = 'w'")
                conn.execute("UPDATE task SET state = 'completed', transition_trigger = "
                             "'validation_passed' WHERE task_id = ?", task)
        life = time.perf_counter() - t0
        events = db.scalar(conn, "SELECT COUNT(*) FROM event")
        conn.close()
    print(f"SQLite {'.'.join(map(str, db.sqlite_version()))}, {n} tasks, {events} events")
    print(f"  insert (with creation events)   {insert:7.3f} s  {insert / n * 1e6:6.1f} us/task")
    print(f"  pending->queued, one UPDATE     {queue:7.3f} s  {n / queue:9,.0f} tasks/s")
    print(f"  queued->completed, tx per task  {life:7.3f} s  {n / life:9,.0f} tasks/s "
          f"({5 * n / life:,.0f} transitions/s)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20000)
