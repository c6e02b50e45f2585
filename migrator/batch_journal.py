"""The batch journal: how each mailbox of a batch ended, so a rerun skips finished ones at once.

One SQLite file per batch file (by its absolute path), in --state-dir or the user state dir,
written by the batch client only (one row per mailbox, committed as each mailbox ends; mode 0600,
locked: one batch client per batch file at a time). A mailbox is keyed by its source and
destination URLs, so reordering or adding rows keeps what is known. It holds the mailbox results
of the fleet report (counts, times, the first error's reason): no secret, no message.

Which mailboxes a rerun runs (select()):
- done earlier: skipped, without any connection (their earlier result is reported);
- failed earlier: skipped unless --retry-failed (fix the cause first: a password, a quota);
- interrupted, not started, or never seen: run (each resumes from its own checkpoint);
- --rerun-all: every mailbox again (an incremental pass copies only what is new).
"""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import dataclass, field
from typing import Any

from migrator.batch import BatchRow
from migrator.digest import short_digest
from migrator.errors import StateError
from migrator.fsutil import ensure_private_dir, lock_exclusive

_SCHEMA = """CREATE TABLE IF NOT EXISTS mailboxes (
    key TEXT PRIMARY KEY, status TEXT NOT NULL, exit_code INTEGER NOT NULL, result TEXT NOT NULL)"""


def journal_path(state_dir: str, csv_file: str) -> str:
    absolute = os.path.abspath(csv_file)
    name = "".join(c if c.isalnum() or c in "._-" else "_" for c in os.path.basename(absolute))
    return os.path.join(state_dir, f"batch-{name}-{short_digest(absolute.encode()):012x}.sqlite")


def row_key(row: BatchRow) -> str:
    return f"{row.source} -> {row.destination}"


@dataclass
class Selection:
    run: list[BatchRow] = field(default_factory=list)
    done: list[dict[str, Any]] = field(default_factory=list)  # earlier results, skipped
    failed: list[dict[str, Any]] = field(default_factory=list)  # earlier failures, not retried


class BatchJournal:
    def __init__(self, path: str):
        self.path = path
        ensure_private_dir(os.path.dirname(os.path.abspath(path)))
        self._lock = lock_exclusive(path + ".lock", f"batch journal {path} is in use by another migrator batch",
                                    hint="wait for it to finish")
        if not os.path.exists(path):
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        try:
            self._db = sqlite3.connect(path, isolation_level=None)
            self._db.execute(_SCHEMA)
        except sqlite3.DatabaseError as e:
            self._lock.close()
            raise StateError(f"{path}: not a batch journal ({e})", hint="move it away to start the batch over") \
                from None

    def select(self, rows: list[BatchRow], retry_failed: bool, rerun_all: bool) -> Selection:
        known = {k: (status, json.loads(result)) for k, status, result in
                 self._db.execute("SELECT key, status, result FROM mailboxes")}
        chosen = Selection()
        for row in rows:
            status, result = known.get(row_key(row), (None, None))
            if rerun_all or result is None or status in ("interrupted", "not started"):
                chosen.run.append(row)
            elif status == "done":
                chosen.done.append({**result, "line": row.line, "this_run": False})
            elif retry_failed:
                chosen.run.append(row)
            else:
                chosen.failed.append({**result, "line": row.line, "this_run": False})
        return chosen

    def record(self, row: BatchRow, result: dict[str, Any]) -> None:
        self._db.execute("INSERT OR REPLACE INTO mailboxes(key, status, exit_code, result) VALUES (?, ?, ?, ?)",
                         (row_key(row), result["status"], result["exit_code"], json.dumps(result)))

    def close(self) -> None:
        self._db.close()
        self._lock.close()
