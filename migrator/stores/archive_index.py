"""The shared, process-wide handle on one archive directory: its marker, lock, index and data files.

docs/archive-format.md describes the format. This module owns what must hold whoever reads or
writes the archive:

- creating an archive is atomic: the lock is taken before anything is looked at, so two runs
  started at once on a new directory give one archive and one "in use" refusal;
- the version in archive.json is checked (VERSIONS: what this code reads); an archive of an
  older version opened for writing is marked with the current one;
- a torn tail (frames written after the last index commit, by a process killed meanwhile) is
  cut off on open: those bytes are referenced by no index row, and `zstd -t` must pass;
- every SQLite error becomes one line: StorageError (the run stops at once).
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from migrator.errors import StateError, StorageError, UsageError
from migrator.fsutil import ensure_private_dir, lock_exclusive, write_private

ARCHIVE_FORMAT = "migrator-archive"
# 1: one zstd frame per message, SHA-256 per message in the index.
# 2: frames carry zstd's content checksum; the `damaged` table (archive check --repair).
# 3: frames hold separator lines and group small messages (column `start`); messages with the
#    same bytes share one frame (dedup, by the index on sha256).
ARCHIVE_VERSION = 3
VERSIONS = (1, 2, 3)
MARKER = "archive.json"
LOCK = "lock"
T = TypeVar("T")

_COLUMNS = """
    folder_id INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    file TEXT NOT NULL,
    offset INTEGER NOT NULL,
    length INTEGER NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    flags TEXT NOT NULL,
    internaldate TEXT NOT NULL,
    start INTEGER NOT NULL DEFAULT 0"""
# Those of version 1 and 2; `start` (version 3) is ArchiveIndex.start_column.
MESSAGE_COLUMNS = "folder_id, uid, file, offset, length, size, sha256, flags, internaldate"
# An archive of version 1 or 2 brought to 3 when it is opened for writing (additive: a column
# last, as a new archive has it, and an index).
_UPGRADE = [
    "ALTER TABLE messages ADD COLUMN start INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE damaged ADD COLUMN start INTEGER NOT NULL DEFAULT 0",
]
_DEDUP_INDEX = "CREATE INDEX IF NOT EXISTS messages_sha256 ON messages(sha256)"
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS folders (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    uidvalidity INTEGER NOT NULL,
    uidnext INTEGER NOT NULL,
    subscribed INTEGER NOT NULL DEFAULT 0,
    special_use TEXT
);
CREATE TABLE IF NOT EXISTS messages ({_COLUMNS},
    PRIMARY KEY (folder_id, uid)
);
CREATE TABLE IF NOT EXISTS damaged ({_COLUMNS},
    reason TEXT NOT NULL,
    found REAL NOT NULL,
    PRIMARY KEY (folder_id, uid)
);
"""


class ArchiveIndex:
    """One per archive directory and process, shared by its ArchiveStores (one per worker)."""

    _registry: dict[str, ArchiveIndex] = {}
    _registry_lock = threading.Lock()

    @classmethod
    def open(cls, path: str, create: bool) -> ArchiveIndex:
        key = os.path.abspath(path)
        with cls._registry_lock:
            arc = cls._registry.get(key)
            if arc is None or arc.closed:
                arc = cls._registry[key] = cls(key, create)
            arc.users += 1
            return arc

    def __init__(self, path: str, create: bool):
        self.path = path
        self.users = 0
        self.start_column = "start"  # what queries read as a message's start (_upgraded())
        self.closed = False
        self.lock = threading.RLock()
        self._file_counter = 0
        try:
            self._lock_fh = self._locked(create)
        except OSError as e:
            raise StorageError(f"cannot open archive {path}: {e.strerror or e}") from None
        try:
            self.db = self._connect(create)
            self._trim_tails()
        except BaseException:
            self._lock_fh.close()
            raise

    def _locked(self, create: bool):
        """The archive's lock, held; the archive created under it if it is new (create)."""
        path = self.path
        marker = os.path.join(path, MARKER)
        busy = f"archive {path} is in use by another migrator process"
        if os.path.exists(marker):
            self._check_marker(marker, upgrade=False)
            fh = lock_exclusive(os.path.join(path, LOCK), busy)
            try:
                if create:
                    self._check_marker(marker, upgrade=True)  # under the lock
            except BaseException:
                fh.close()
                raise
            return fh
        if not create:
            raise UsageError(f"{path} is not a migrator archive (no {MARKER})")
        ensure_private_dir(path)
        lock_path = os.path.join(path, LOCK)
        had_lock = os.path.exists(lock_path)
        fh = lock_exclusive(lock_path, busy)
        try:
            # Under the lock: another process may have created it since we looked.
            if not os.path.exists(marker):
                others = [n for n in os.listdir(path) if n != LOCK and not n.startswith(MARKER + ".tmp")]
                if others:
                    if not had_lock:
                        os.unlink(lock_path)  # not ours to leave behind in a foreign directory
                    raise UsageError(f"{path} exists and is not empty, and is not a migrator archive")
                write_private(marker, json.dumps({"format": ARCHIVE_FORMAT, "version": ARCHIVE_VERSION}) + "\n")
            self._check_marker(marker, upgrade=create)
            ensure_private_dir(os.path.join(path, "data"))
        except BaseException:
            fh.close()
            raise
        return fh

    def _check_marker(self, marker: str, upgrade: bool) -> None:
        try:
            with open(marker, encoding="utf-8") as fh:
                meta = json.load(fh)
        except (OSError, ValueError) as e:
            raise StateError(f"{marker} is unreadable: {e}") from None
        if not isinstance(meta, dict) or meta.get("format") != ARCHIVE_FORMAT:
            raise StateError(f"{self.path} is not a migrator archive")
        version = meta.get("version")
        if version not in VERSIONS:
            raise StateError(f"archive {self.path} has version {version}; this migrator reads versions "
                             f"{', '.join(map(str, VERSIONS))}")
        if upgrade and version != ARCHIVE_VERSION:
            write_private(marker, json.dumps({**meta, "version": ARCHIVE_VERSION}) + "\n")

    def _connect(self, writable: bool) -> sqlite3.Connection:
        index = os.path.join(self.path, "index.sqlite")
        try:
            if not os.path.exists(index):
                os.close(os.open(index, os.O_CREAT | os.O_WRONLY, 0o600))
            db = sqlite3.connect(index, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
            self.start_column = self._upgraded(db, writable)
        except sqlite3.DatabaseError as e:
            raise self.damaged(e) from None
        except OSError as e:
            raise StorageError(f"cannot open archive {self.path}: {e.strerror or e}") from None
        return db

    @staticmethod
    def _upgraded(db: sqlite3.Connection, writable: bool) -> str:
        """The schema of version 3 (one transaction), if it is older and may be written; what a
        query reads as a message's `start` (0 in a version 1 or 2 index opened read-only)."""
        if "start" in {row[1] for row in db.execute("PRAGMA table_info(messages)")}:
            if writable:
                db.execute(_DEDUP_INDEX)
            return "start"
        if not writable:
            return "0"
        db.executescript(f"BEGIN; {'; '.join([*_UPGRADE, _DEDUP_INDEX])}; COMMIT;")
        return "start"

    def damaged(self, e: sqlite3.DatabaseError) -> StorageError:
        """What a SQLite error means: the index cannot be written (disk full, read-only), or is damaged."""
        text = str(e)
        if any(w in text for w in ("full", "readonly", "read-only", "I/O")):
            return StorageError(f"cannot write archive {self.path}: index.sqlite: {text}")
        return StorageError(f"archive {self.path}: index.sqlite is damaged ({text})",
                            hint=f"see `migrator archive check {self.path}`")

    def _trim_tails(self) -> None:
        """Cut each data file after the last frame an index row points at (a torn tail, or frames
        whose rows were never committed): no reader ever used those bytes. A file no row points
        at goes. Skipped where the directory cannot be written (a read-only copy is only read)."""
        data = os.path.join(self.path, "data")
        ends = dict(self.read(
            "SELECT file, MAX(offset + length) FROM (SELECT file, offset, length FROM messages "
            "UNION ALL SELECT file, offset, length FROM damaged) GROUP BY file"))
        try:
            names = os.listdir(data)
        except OSError:
            return
        for name in names:
            if not name.endswith(".zst"):
                continue
            file = os.path.join(data, name)
            try:
                end = ends.get(name, 0)
                if not end:  # empty ones too: `zstd -t` fails on an empty file
                    os.unlink(file)
                elif os.path.getsize(file) > end:
                    os.truncate(file, end)
            except OSError:
                return

    def read(self, sql: str, params: tuple = ()) -> list[Any]:
        with self.lock:
            try:
                return self.db.execute(sql, params).fetchall()
            except sqlite3.DatabaseError as e:
                raise self.damaged(e) from None

    def write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """work(db) in one transaction; a failure rolls it back (if SQLite has not already) and
        is raised as StorageError."""
        with self.lock:
            db = self.db
            try:
                db.execute("BEGIN IMMEDIATE")
                out = work(db)
                db.execute("COMMIT")
                return out
            except sqlite3.DatabaseError as e:
                self._rollback()
                raise self.damaged(e) from None
            except BaseException:
                self._rollback()
                raise

    def _rollback(self) -> None:
        # SQLite ends the transaction itself on some errors (SQLITE_FULL among them): a ROLLBACK
        # then fails with "cannot rollback - no transaction is active".
        if self.db.in_transaction:
            try:
                self.db.execute("ROLLBACK")
            except sqlite3.DatabaseError:
                pass

    def release(self) -> None:
        with self._registry_lock:
            self.users -= 1
            if self.users > 0:
                return
            self.closed = True
            self.db.close()
            self._lock_fh.close()

    def new_data_file(self, folder_id: int) -> str:
        """A data file name no other writer uses (per process run, per writer)."""
        with self.lock:
            self._file_counter += 1
            return f"{folder_id}-{os.getpid()}-{random.getrandbits(32):08x}-{self._file_counter}.zst"
