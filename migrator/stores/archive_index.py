"""The shared, process-wide handle on one archive directory: its marker, lock, index and data files.

docs/archive-format.md describes the format. This module owns what must hold whoever reads or
writes the archive:

- creating an archive is atomic: the lock is taken before anything is looked at, so two runs
  started at once on a new directory give one archive and one "in use" refusal;
- the version in archive.json is checked (VERSIONS: what this code reads); an archive of an
  older version opened for writing is marked with the current one;
- a torn tail (frames written after the last index commit, by a process killed meanwhile) is
  cut off on open: those bytes are referenced by no index row, and `zstd -t` must pass;
- every SQLite error becomes one line: StorageError (the run stops at once);
- writers and readers: one writer at a time holds `lock` (flock, exclusive); readers (verify,
  restore, ls, check) take no part of it, but a shared flock on `readers`, and read in one SQLite
  read transaction (WAL): a consistent snapshot while a backup writes. Whoever deletes data files
  (compact, the trim of torn tails) does so only when no reader holds `readers`;
- a writer opened for a backup run records it as a snapshot (archive_snapshots.py).
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
from migrator.fsutil import ensure_private_dir, lock_exclusive, lock_shared, write_private
from migrator.stores import archive_snapshots as snapshots

ARCHIVE_FORMAT = "migrator-archive"
# 1: one zstd frame per message, SHA-256 per message in the index.
# 2: frames carry zstd's content checksum; the `damaged` table (archive check --repair).
# 3: snapshots: `runs`, `flag_history`, messages.added_run/removed_run, folders.created_run.
# 4: also frames hold separator lines and group small messages (column `start`); messages with
#    the same bytes share one frame (dedup, by the index on sha256). (The export/layout work was
#    called 3 on its branch only; no archive of that kind was ever written by a release.)
# 5: separator lines carry 16 hex digits of the SHA-256, not 64 (frames of version 4 are read as
#    they are); folders.removed_run (a folder gone from the source leaves the latest snapshot).
# 6: an encrypted archive (archive_crypt.py): archive.json's "encryption" names its age recipients,
#    every frame is age-encrypted, and its rows' frame_sha256 is the SHA-256 of the frame as stored
#    (its ciphertext). A plain archive stays at 5 (a migrator that reads 5 still reads it): the
#    column is added to its index too, and left NULL.
ARCHIVE_VERSION = 5
ENCRYPTED_VERSION = 6
VERSIONS = (1, 2, 3, 4, 5, 6)
MARKER = "archive.json"
LOCK = "lock"
READERS = "readers"  # shared flock of each reader; an exclusive one (non-blocking) before deleting data
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
    start INTEGER NOT NULL DEFAULT 0,
    frame_sha256 TEXT"""
# Those of version 1 and 2; `start` (version 4) is ArchiveIndex.start_column, frame_sha256 its frame_column.
MESSAGE_COLUMNS = "folder_id, uid, file, offset, length, size, sha256, flags, internaldate"
# An index of version 1, 2 or 3 gets `start` in place (additive: O(1) in SQLite, 0 is right for
# every frame written before it: one message, no separator line), and the dedup index; any
# frame_sha256 (NULL: a plain archive's frames are checked by decoding them).
_STARTS = ("messages", "damaged")
_ADDED = (("start", "INTEGER NOT NULL DEFAULT 0"), ("frame_sha256", "TEXT"))
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


def _current(db: sqlite3.Connection) -> bool:
    """The index has every table and column of this version."""
    return snapshots.schema_current(db) and {"start", "frame_sha256"} <= set(snapshots.columns(db, "messages"))


class ArchiveIndex:
    """One per archive directory and process, shared by its ArchiveStores (one per worker)."""

    _registry: dict[tuple[str, bool], ArchiveIndex] = {}
    _registry_lock = threading.Lock()

    @classmethod
    def open(cls, path: str, create: bool, readonly: bool = False, snapshot: bool = False,
             encrypt_to: tuple[str, ...] = ()) -> ArchiveIndex:
        """readonly: a reader (shared, never refused by a writer); else the one writer, which
        records a run (a snapshot) if `snapshot`. encrypt_to: the age recipients a new archive is
        encrypted to; an existing one must have these (or encrypt_to is empty)."""
        key = (os.path.abspath(path), readonly)
        with cls._registry_lock:
            arc = cls._registry.get(key)
            if arc is None or arc.closed:
                arc = cls._registry[key] = cls(key[0], create and not readonly, readonly, snapshot, encrypt_to)
            elif encrypt_to:
                same_recipients(arc.path, arc.recipients, encrypt_to)
            arc.users += 1
            return arc

    def __init__(self, path: str, create: bool, readonly: bool = False, snapshot: bool = False,
                 encrypt_to: tuple[str, ...] = ()):
        self.path = path
        self.readonly = readonly
        self.users = 0
        self.start_column = "start"  # what queries read as a message's start (_upgraded())
        self.frame_column = "frame_sha256"  # and its frame's SHA-256 ("NULL" in an index without the column)
        self.folders_removed = True  # folders.removed_run is there (an index an older writer holds may lack it)
        self.recipients: tuple[str, ...] = ()  # the age recipients of an encrypted archive (archive.json)
        self._encrypt_to = encrypt_to
        self.closed = False
        self.lock = threading.RLock()
        self._file_counter = 0
        self.run: int | None = None  # the snapshot this writer records
        try:
            self._lock_fh = None if readonly else self._locked(create)
            if readonly:
                self._check_reader()
            if encrypt_to:
                same_recipients(path, self.recipients, encrypt_to)
        except OSError as e:
            raise StorageError(f"cannot open archive {path}: {e.strerror or e}") from None
        except BaseException:
            if (held := getattr(self, "_lock_fh", None)) is not None:
                held.close()
            raise
        try:
            self.db = self._connect()
            if readonly:
                self._tidy_if_idle()
                self._lock_fh = self._reader_lock()
                self.db.execute("BEGIN")  # one read transaction, for as long as the reader is open
                self.db.execute("SELECT COUNT(*) FROM runs").fetchone()
                # Decided inside the transaction: a writer may have upgraded the index since _connect.
                columns = snapshots.columns(self.db, "messages")
                self.start_column = "start" if "start" in columns else "0"
                self.frame_column = "frame_sha256" if "frame_sha256" in columns else "NULL"
                self.folders_removed = "removed_run" in snapshots.columns(self.db, "folders")
            else:
                self._trim_tails()
                if snapshot:
                    self.run = self.write(snapshots.begin_run)
        except BaseException:
            if getattr(self, "db", None) is not None:
                self.db.close()
            if self._lock_fh is not None:
                self._lock_fh.close()
            raise

    def _check_reader(self) -> None:
        """The archive must exist, at a version this code reads."""
        marker = os.path.join(self.path, MARKER)
        if not os.path.exists(marker):
            raise UsageError(f"{self.path} is not a migrator archive (no {MARKER})")
        self._check_marker(marker, upgrade=False)

    def _reader_lock(self):
        """A reader's shared lock on `readers` (None where the directory is read-only: nothing can
        delete anything there)."""
        try:
            return lock_shared(os.path.join(self.path, READERS))
        except OSError:
            return None

    def _tidy_if_idle(self) -> None:
        """A reader opening an archive no writer holds cuts torn tails as a writer's open does (so
        `zstd -t` passes after a crash whoever opens next), holding the writer's lock for that
        moment only; with a writer at work it leaves them to it."""
        try:
            idle = lock_exclusive(os.path.join(self.path, LOCK), "")
        except (StateError, OSError):
            return
        try:
            self._trim_tails()
        finally:
            idle.close()

    def no_readers(self):
        """The exclusive lock on `readers` if no reader holds it (to delete data files), else None."""
        try:
            return lock_exclusive(os.path.join(self.path, READERS), "")
        except (StateError, OSError):
            return None

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
                write_private(marker, json.dumps(new_marker(self._encrypt_to)) + "\n")
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
        self.recipients = recipients_of(meta, self.path)
        current = ENCRYPTED_VERSION if self.recipients else ARCHIVE_VERSION
        if upgrade and version != current:
            write_private(marker, json.dumps({**meta, "version": current}) + "\n")

    def _connect(self) -> sqlite3.Connection:
        index = os.path.join(self.path, "index.sqlite")
        try:
            if not os.path.exists(index):
                os.close(os.open(index, os.O_CREAT | os.O_WRONLY, 0o600))
            last_written = os.path.getmtime(index)
            db = sqlite3.connect(index, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            if not self.readonly or not _current(db):
                self._upgrade(db, last_written)
        except sqlite3.DatabaseError as e:
            raise self.damaged(e) from None
        except OSError as e:
            raise StorageError(f"cannot open archive {self.path}: {e.strerror or e}") from None
        return db

    def _upgrade(self, db: sqlite3.Connection, last_written: float) -> None:
        """The tables created, or those of an older version brought to this one, in one
        transaction. A reader finding an older index does it only when no writer is at work (a
        writer of this version upgrades on open). While a writer of version 3 holds the lock, a
        reader reads that index as it is (every `start` 0: the only frames version 3 writes)."""
        held = None
        if self.readonly:
            try:
                held = lock_exclusive(os.path.join(self.path, LOCK), f"archive {self.path} is in use by an older "
                                      "migrator, which wrote an earlier format version: try again when it is done")
            except (StateError, OSError):
                if snapshots.schema_current(db, readable=True):
                    return
                raise
        try:
            db.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            snapshots.upgrade(db, last_written)
            for table in _STARTS:
                for column, kind in _ADDED:
                    if column not in snapshots.columns(db, table):
                        db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            db.execute(_DEDUP_INDEX)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        finally:
            if held is not None:
                held.close()

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
        at goes. Skipped where the directory cannot be written (a read-only copy is only read),
        and while a reader is open (its snapshot may still point at a file a prune left unused)."""
        data = os.path.join(self.path, "data")
        alone = self.no_readers()
        if alone is None:
            return
        try:
            self._trim(data)
        finally:
            alone.close()

    def _trim(self, data: str) -> None:
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
                end = ends.get(name)
                if end is None:  # no row points at it, also when empty (zstd -t fails on an empty file)
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
            if (run := self.run) is not None:
                try:
                    self.write(lambda db: snapshots.finish_run(db, run))
                except StorageError:
                    pass  # disk full: the run stays "not finished", which is what it is
            self.db.close()
            if self._lock_fh is not None:
                self._lock_fh.close()

    def new_data_file(self, folder_id: int) -> str:
        """A data file name no other writer uses (per process run, per writer)."""
        with self.lock:
            self._file_counter += 1
            return f"{folder_id}-{os.getpid()}-{random.getrandbits(32):08x}-{self._file_counter}.zst"


def new_marker(encrypt_to: tuple[str, ...]) -> dict:
    """archive.json of a new archive: plain (version 4), or encrypted to these age recipients (5)."""
    if not encrypt_to:
        return {"format": ARCHIVE_FORMAT, "version": ARCHIVE_VERSION}
    return {"format": ARCHIVE_FORMAT, "version": ENCRYPTED_VERSION, "encryption": {"age": list(encrypt_to)}}


def recipients_of(meta: dict, path: str) -> tuple[str, ...]:
    """The age recipients archive.json names (none: a plain archive)."""
    encryption = meta.get("encryption")
    if encryption is None:
        return ()
    if not isinstance(encryption, dict) or not encryption.get("age") or set(encryption) != {"age"}:
        raise StateError(f"archive {path}: archive.json's \"encryption\" is not one this migrator knows")
    return tuple(sorted(encryption["age"]))


def recipients_at(path: str) -> tuple[str, ...]:
    """The age recipients of the archive at path, as its archive.json says (none: plain, or no
    archive: opening it says what is wrong)."""
    try:
        with open(os.path.join(path, MARKER), encoding="utf-8") as fh:
            meta = json.load(fh)
    except (OSError, ValueError):
        return ()
    return recipients_of(meta, path) if isinstance(meta, dict) else ()


def same_recipients(path: str, stored: tuple[str, ...], given: tuple[str, ...]) -> None:
    """--encrypt-to into an existing archive: it must name the recipients the archive has."""
    if not stored:
        raise UsageError(f"archive {path} is not encrypted, and an archive is encrypted (or not) when it is created: "
                         "back up into a new directory to encrypt", hint="or leave out --encrypt-to")
    if tuple(sorted(given)) != stored:
        raise UsageError(f"archive {path} is encrypted to other recipients ({len(stored)}, archive.json): give the "
                         "same --encrypt-to, or none (a backup uses the stored ones)")
