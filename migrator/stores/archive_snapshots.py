"""Snapshots: each backup run of an archive is one (docs/archive-format.md, version 3).

A run is a row of `runs`. What each snapshot holds is recorded by change only, so a run that
changes nothing writes one row:

- a message row carries the run that added it (`added_run`) and the run that found it gone from
  the source (`removed_run`; NULL while the source holds it). It is in snapshot R when
  added_run <= R and (removed_run IS NULL or removed_run > R). Mail deleted on the source stays
  in the snapshots before its removal, and its bytes in the data files;
- a run W that changes a message's flags first keeps the flags it had in
  `flag_history(folder_id, uid, until_run=W, flags)`: the flags of snapshot R are those of the
  first change after R, else the current ones (`messages.flags`);
- a folder carries the run that created it (`created_run`) and the run that found it gone from
  the source (`removed_run`, with its messages: engine/prepare.py). A folder the source makes
  again under that name is brought back (removed_run NULL again): the snapshots between then
  show it, empty.

The latest snapshot is the current state (removed_run IS NULL, messages.flags): what the engine
lists when it backs up, and what `verify` compares. Older ones are read through View(run).
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from migrator.errors import UsageError

SNAPSHOT_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused, even after a prune
    started REAL NOT NULL,
    finished REAL                          -- NULL: running, or killed
);
CREATE TABLE IF NOT EXISTS flag_history (
    folder_id INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    until_run INTEGER NOT NULL,  -- the run that changed them
    flags TEXT NOT NULL,         -- the flags before that run
    PRIMARY KEY (folder_id, uid, until_run)
);
"""
# Added to version 2's tables in place (ALTER TABLE ... ADD COLUMN is O(1) in SQLite): rows of an
# archive written before snapshots read as run 1, the run the upgrade records for that state.
_NEW_COLUMNS = (("messages", "added_run", "INTEGER NOT NULL DEFAULT 1"),
                ("messages", "removed_run", "INTEGER"),
                ("folders", "created_run", "INTEGER NOT NULL DEFAULT 1"),
                # version 5 (in place, like the others): NULL, not gone
                ("folders", "removed_run", "INTEGER"))


def schema_current(db: sqlite3.Connection, readable: bool = False) -> bool:
    """Every snapshot table and column there; readable: enough of them for a reader (an index of
    version 3 or 4 read while its older writer holds it has no folders.removed_run yet)."""
    wanted = [(t, c) for t, c, _ in _NEW_COLUMNS if not (readable and (t, c) == ("folders", "removed_run"))]
    return all(column in columns(db, table) for table, column in wanted) and bool(
        db.execute("SELECT 1 FROM sqlite_master WHERE name='flag_history'").fetchone())


def upgrade(db: sqlite3.Connection, last_written: float) -> None:
    """Version 2's index brought to 3, in the caller's transaction (idempotent; executescript would commit, so
    statement by statement). If it holds
    anything, its state becomes snapshot 1, dated when the index was last written."""
    for statement in SNAPSHOT_SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)
    for table, column, decl in _NEW_COLUMNS:
        if column not in columns(db, table):
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
    db.execute("CREATE INDEX IF NOT EXISTS messages_removed ON messages (removed_run) WHERE removed_run IS NOT NULL")
    empty = db.execute("SELECT (SELECT COUNT(*) FROM runs) = 0 AND "
                       "(EXISTS (SELECT 1 FROM messages) OR EXISTS (SELECT 1 FROM folders))").fetchone()[0]
    if empty:
        db.execute("INSERT INTO runs (id, started, finished) VALUES (1, ?, ?)", (last_written, last_written))


def columns(db: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}


def begin_run(db: sqlite3.Connection) -> int:
    cur = db.execute("INSERT INTO runs (started) VALUES (?)", (time.time(),))
    return int(cur.lastrowid or 0)


def finish_run(db: sqlite3.Connection, run: int) -> None:
    db.execute("UPDATE runs SET finished=? WHERE id=?", (time.time(), run))


@dataclass(frozen=True)
class View:
    """Which snapshot a reader sees: run None is the latest (the current state)."""

    run: int | None = None
    folders_removed: bool = True  # the index has folders.removed_run (an index read as an older writer left it may not)

    def member(self, alias: str = "") -> tuple[str, tuple]:
        """SQL condition (and its parameters): the message row is in this snapshot."""
        a = f"{alias}." if alias else ""
        if self.run is None:
            return f"{a}removed_run IS NULL", ()
        return f"{a}added_run <= ? AND ({a}removed_run IS NULL OR {a}removed_run > ?)", (self.run, self.run)

    def flags(self, alias: str) -> tuple[str, tuple]:
        """SQL expression (and its parameters): the message's flags in this snapshot."""
        if self.run is None:
            return f"{alias}.flags", ()
        return (f"COALESCE((SELECT h.flags FROM flag_history h WHERE h.folder_id={alias}.folder_id AND "
                f"h.uid={alias}.uid AND h.until_run > ? ORDER BY h.until_run LIMIT 1), {alias}.flags)", (self.run,))

    def folder(self, alias: str = "") -> tuple[str, tuple]:
        a = f"{alias}." if alias else ""
        if not self.folders_removed:
            return ("1", ()) if self.run is None else (f"{a}created_run <= ?", (self.run,))
        if self.run is None:
            return f"{a}removed_run IS NULL", ()
        return f"{a}created_run <= ? AND ({a}removed_run IS NULL OR {a}removed_run > ?)", (self.run, self.run)


# -- which snapshot --as-of names --------------------------------------------------------------

def parse_as_of(text: str) -> int | datetime:
    """A run id (`12`, `#12`), or an ISO 8601 date or time: a date alone means the end of that day
    (the state on that day); a time without a zone is local time."""
    t = text.strip()
    if t.lstrip("#").isdigit():
        return int(t.lstrip("#"))
    try:
        if len(t) == 10:
            day = date.fromisoformat(t)
            return datetime(day.year, day.month, day.day).astimezone() + timedelta(days=1) - timedelta(microseconds=1)
        when = datetime.fromisoformat(t)
    except ValueError:
        raise UsageError(f"--as-of {text}: not a snapshot id (see `migrator archive ls DIR --runs`) nor an "
                         "ISO 8601 date or time (2026-12-01, 2026-12-01T08:00:00Z)") from None
    return when if when.tzinfo else when.astimezone()


def resolve(db: sqlite3.Connection, text: str, where: str) -> int:
    """The snapshot --as-of TEXT names in the archive at `where`; a UsageError if there is none."""
    wanted = parse_as_of(text)
    if isinstance(wanted, int):
        if db.execute("SELECT 1 FROM runs WHERE id=?", (wanted,)).fetchone() is None:
            raise UsageError(f"--as-of {text}: archive {where} has no snapshot {wanted}",
                             hint=f"`migrator archive ls {where} --runs` lists them")
        return wanted
    row = db.execute("SELECT MAX(id) FROM runs WHERE started <= ?", (wanted.timestamp(),)).fetchone()
    if row[0] is None:
        first = db.execute("SELECT MIN(started) FROM runs").fetchone()[0]
        since = f"; its first is of {stamp(first)}" if first is not None else "; it has none yet"
        raise UsageError(f"--as-of {text}: archive {where} has no snapshot taken by then{since}")
    return int(row[0])


def stamp(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- what `archive ls --runs` shows --------------------------------------------------------------

@dataclass(frozen=True)
class RunInfo:
    id: int
    started: float
    finished: float | None
    messages: int  # in this snapshot
    added: int  # new since the snapshot before
    removed: int  # deleted on the source since the snapshot before
    flag_changes: int


def runs(db: sqlite3.Connection) -> list[RunInfo]:
    """Every snapshot with its counts: one pass over the messages (counts per run, summed in
    order), not one per snapshot."""
    added = dict(db.execute("SELECT added_run, COUNT(*) FROM messages GROUP BY added_run"))
    removed = dict(db.execute("SELECT removed_run, COUNT(*) FROM messages WHERE removed_run IS NOT NULL "
                              "GROUP BY removed_run"))
    changed = dict(db.execute("SELECT until_run, COUNT(*) FROM flag_history GROUP BY until_run"))
    out, total, prev = [], 0, 0
    for run_id, started, finished in db.execute("SELECT id, started, finished FROM runs ORDER BY id").fetchall():
        # Pruned runs between two kept ones: their additions and removals count towards the next.
        new = sum(n for r, n in added.items() if prev < r <= run_id)
        gone = sum(n for r, n in removed.items() if prev < r <= run_id)
        total += new - gone
        out.append(RunInfo(run_id, started, finished, total, new, gone, changed.get(run_id, 0)))
        prev = run_id
    return out
