"""Checkpoint store: which source message became which destination message.

SQLite in WAL mode. One row per (source folder, source UIDVALIDITY, source UID,
destination folder). The journal idea comes from mbsync: a row is written as
'pending' (with the message's SHA-256) *before* the APPEND and turned 'done'
(with the destination UID from APPENDUID) after it. A crash between the two
leaves a pending row; the next run settles it by looking at what the
destination really holds (engine.march), never by copying blindly.

A second table keeps per-folder *watermarks* (UIDVALIDITY, UIDNEXT, MESSAGES,
HIGHESTMODSEQ of both sides, as of the end of the last complete pass): a rerun
that finds the same STATUS on both sides skips the folder (engine/prepare.py).

The state is bound to one source and one destination account (meta table):
using it for another pair is refused, as its rows would mean nothing there.

Rows whose UIDVALIDITY no longer matches the server are simply not consulted:
the engine then reconciles that folder by fingerprint.

One process at a time: an exclusive flock on PATH.lock.
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

from migrator.errors import StateError, StorageError
from migrator.fsutil import ensure_private_dir, lock_exclusive
from migrator.naming import Folder, folder_from_key, folder_key

STATE_FORMAT = "migrator-state"
STATE_VERSION = 2
# Version 1 had no messages.date; it is added on open (_upgrade), and a version 1 file is then 2.
_UPGRADES = {1: "ALTER TABLE messages ADD COLUMN date TEXT"}

PENDING, DONE, FAILED, ALTERED = "pending", "done", "failed", "altered"
# Stored, with a destination UID, but its bytes not yet compared with what was sent (engine/content.py)
UNVERIFIED = "unverified"

# Named on every INSERT: a version 1 file upgraded by ALTER TABLE has date last, as a new one does.
_COLUMNS = ("src_folder, src_uidvalidity, src_uid, dst_folder, dst_uidvalidity, dst_uid, size, sha256, flags, "
            "status, reason, updated, date")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
    src_folder TEXT NOT NULL,
    src_uidvalidity INTEGER NOT NULL,
    src_uid INTEGER NOT NULL,
    dst_folder TEXT NOT NULL,
    dst_uidvalidity INTEGER NOT NULL,
    dst_uid INTEGER,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    flags TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    updated REAL NOT NULL,
    date TEXT,  -- the INTERNALDATE sent (NULL: not known, a row of version 1)
    PRIMARY KEY (src_folder, src_uidvalidity, src_uid, dst_folder)
);
CREATE INDEX IF NOT EXISTS messages_dst ON messages (dst_folder, dst_uidvalidity, dst_uid);
-- What STATUS said about both folders when a folder pair was last left complete.
-- A rerun that sees the same values on both sides has nothing to do there.
CREATE TABLE IF NOT EXISTS watermarks (
    src_folder TEXT NOT NULL,
    dst_folder TEXT NOT NULL,
    options TEXT NOT NULL,
    src_uidvalidity INTEGER NOT NULL,
    src_uidnext INTEGER NOT NULL,
    src_messages INTEGER NOT NULL,
    src_modseq INTEGER NOT NULL,
    dst_uidvalidity INTEGER NOT NULL,
    dst_uidnext INTEGER NOT NULL,
    dst_messages INTEGER NOT NULL,
    dst_modseq INTEGER NOT NULL,
    settled INTEGER NOT NULL,
    skipped_deleted INTEGER NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (src_folder, dst_folder)
);
-- Copies sent again for an intent left pending (an APPEND that was in flight when a run died or
-- its connection was cut): the first APPEND may still be committed by the server later. Each row
-- names the copy this state made again (dst_uid), what to look for (size, SHA-256) and from which
-- destination UID on a late twin can appear (since_uid: the folder's UIDNEXT when it was listed).
CREATE TABLE IF NOT EXISTS resent (
    dst_folder TEXT NOT NULL,
    dst_uidvalidity INTEGER NOT NULL,
    dst_uid INTEGER NOT NULL,
    src_uid INTEGER NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    since_uid INTEGER NOT NULL,
    sent REAL NOT NULL,
    PRIMARY KEY (dst_folder, dst_uidvalidity, dst_uid)
);
-- Where a message that has an identity on its source (Gmail's X-GM-MSGID: one message under many
-- labels) was stored: a later folder that shows it too copies that copy within the destination
-- (COPY) instead of downloading it again (engine/within.py). Added by IF NOT EXISTS to older files.
CREATE TABLE IF NOT EXISTS identities (
    identity TEXT NOT NULL,
    dst_folder TEXT NOT NULL,
    dst_uidvalidity INTEGER NOT NULL,
    dst_uid INTEGER NOT NULL,
    size INTEGER NOT NULL,
    PRIMARY KEY (identity, dst_folder)
);
"""


# Flags are stored as JSON lists; a mailbox has few distinct flag sets, and every row carries one.
@functools.lru_cache(maxsize=4096)
def flags_json(flags: tuple[str, ...]) -> str:
    return json.dumps(list(flags))


@functools.lru_cache(maxsize=4096)
def flags_from_json(text: str) -> tuple[str, ...]:
    return tuple(json.loads(text))


@dataclass(frozen=True)
class Row:
    src_uid: int
    dst_uidvalidity: int
    dst_uid: int | None
    size: int
    sha256: str
    flags: tuple[str, ...]
    status: str
    reason: str | None
    updated: float = 0.0  # when the row was last written (for a pending row: when its APPEND went out)
    date: str = ""  # Intent.date ('' if not known: a row of version 1)

    def intent(self) -> Intent:
        return Intent(self.src_uid, self.size, self.sha256, self.flags, self.date)


@dataclass(frozen=True)
class Resent:
    """A copy sent again for an intent left pending (table resent)."""

    dst_uid: int
    src_uid: int
    size: int
    sha256: str
    since_uid: int
    sent: float


@dataclass(frozen=True)
class Watermark:
    options: str
    src_uidvalidity: int
    src_uidnext: int
    src_messages: int
    src_modseq: int
    dst_uidvalidity: int
    dst_uidnext: int
    dst_messages: int
    dst_modseq: int
    settled: int  # source messages known to be on the destination
    skipped_deleted: int


@dataclass(frozen=True)
class Intent:
    src_uid: int
    size: int
    sha256: str
    flags: tuple[str, ...]
    date: str = ""  # the INTERNALDATE the copy is to have: the source's, as sent ('' if not known)


@dataclass(frozen=True)
class Stored:
    """A copy of a message with an identity (table identities)."""
    folder: Folder
    uidvalidity: int
    uid: int
    size: int


class Checkpoint:
    def __init__(self, path: str):
        self.path = path
        parent = os.path.dirname(os.path.abspath(path))
        ensure_private_dir(parent)
        self._lock_fh = lock_exclusive(path + ".lock", f"state file {path} is in use by another migrator process",
                                       hint="wait for it to finish, or use another --state file")
        existed = os.path.exists(path)
        if not existed:
            # Create with 0600 before SQLite opens it: it holds folder names and message hashes.
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        self._mutex = threading.Lock()
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            # The WAL may hold what the main file does not yet: ask SQLite, not the file size.
            # Checked before switching to WAL, so a foreign database is refused untouched.
            existed = existed and self._db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] > 0
            if existed:
                self._check_format()
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a commit survives kill -9
            if existed:
                self._db.executescript(_SCHEMA)  # IF NOT EXISTS: adds tables newer than the file
            else:
                # One transaction: a crash here leaves an empty file, not a headless one.
                self._db.executescript(
                    f"BEGIN; {_SCHEMA} INSERT INTO meta(key, value) VALUES "
                    f"('format', '{STATE_FORMAT}'), ('version', '{STATE_VERSION}'); COMMIT;"
                )
        except sqlite3.DatabaseError as e:
            self.close()
            raise StateError(
                f"state file {path} is not a migrator state file ({e})",
                hint="point --state elsewhere, or start over with --reset-state",
            ) from None
        except StateError:
            self.close()
            raise
        for suffix in ("-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.chmod(path + suffix, 0o600)

    def _check_format(self) -> None:
        try:
            meta = dict(self._db.execute("SELECT key, value FROM meta"))
        except sqlite3.DatabaseError:
            meta = {}
        if meta.get("format") != STATE_FORMAT:
            raise sqlite3.DatabaseError("no migrator header")
        version = meta.get("version")
        if version is not None and version.isdigit() and int(version) in _UPGRADES:
            self._upgrade(int(version))
        elif version != str(STATE_VERSION):
            raise StateError(
                f"state file {self.path} has version {meta.get('version')}, "
                f"this migrator reads version {STATE_VERSION}",
                hint="use the migrator version that wrote it, or --reset-state",
            )

    def _upgrade(self, version: int) -> None:
        """An older state file brought to this version, in one transaction (a crash leaves it as it was)."""
        steps = [_UPGRADES[v] for v in range(version, STATE_VERSION)]
        self._db.executescript(f"BEGIN; {'; '.join(steps)}; "
                               f"UPDATE meta SET value='{STATE_VERSION}' WHERE key='version'; COMMIT;")

    @staticmethod
    def reset(path: str) -> None:
        for suffix in ("", "-wal", "-shm"):
            try:
                os.remove(path + suffix)
            except FileNotFoundError:
                pass

    def bind(self, source: str, destination: str, write: bool = True) -> None:
        """Tie the state to one account pair; refuse a state written for another pair."""
        with self._mutex:
            meta = dict(self._db.execute("SELECT key, value FROM meta"))
        if "source" not in meta:
            if not write:
                return
            self._write("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                        [("source", source), ("destination", destination)])
        elif (meta["source"], meta.get("destination")) != (source, destination):
            raise StateError(
                f"state file {self.path} belongs to another migration "
                f"({meta['source']} -> {meta.get('destination')})",
                hint="use another --state file for this pair, or start over with --reset-state",
            )

    def close(self) -> None:
        # Take the mutex so a worker thread is never cut off in the middle of a write.
        locked = self._mutex.acquire(timeout=5) if hasattr(self, "_mutex") else False
        try:
            self._db.close()
        except Exception:
            pass
        finally:
            if locked:
                self._mutex.release()
        try:
            self._lock_fh.close()
        except Exception:
            pass

    # -- reads -----------------------------------------------------------------------------

    def rows(self, src: Folder, src_uidvalidity: int, dst: Folder) -> dict[int, Row]:
        with self._mutex:
            cur = self._db.execute(
                "SELECT src_uid, dst_uidvalidity, dst_uid, size, sha256, flags, status, reason, updated, date "
                "FROM messages "
                "WHERE src_folder=? AND src_uidvalidity=? AND dst_folder=?",
                (folder_key(src), src_uidvalidity, folder_key(dst)),
            )
            return {
                r[0]: Row(r[0], r[1], r[2], r[3], r[4], flags_from_json(r[5]), r[6], r[7], r[8], r[9] or "")
                for r in cur.fetchall()
            }

    def resent(self, dst: Folder, dst_uidvalidity: int) -> list[Resent]:
        with self._mutex:
            cur = self._db.execute(
                "SELECT dst_uid, src_uid, size, sha256, since_uid, sent FROM resent "
                "WHERE dst_folder=? AND dst_uidvalidity=? ORDER BY dst_uid", (folder_key(dst), dst_uidvalidity))
            return [Resent(*r) for r in cur.fetchall()]

    def record_resent(self, dst: Folder, dst_uidvalidity: int, entries: Iterable[Resent]) -> None:
        self._write("INSERT OR REPLACE INTO resent VALUES (?,?,?,?,?,?,?,?)",
                    [(folder_key(dst), dst_uidvalidity, e.dst_uid, e.src_uid, e.size, e.sha256, e.since_uid, e.sent)
                     for e in entries])

    def drop_resent(self, dst: Folder, dst_uidvalidity: int, dst_uids: Iterable[int]) -> None:
        self._write("DELETE FROM resent WHERE dst_folder=? AND dst_uidvalidity=? AND dst_uid=?",
                    [(folder_key(dst), dst_uidvalidity, uid) for uid in dst_uids])

    def has_rows(self, src: Folder, src_uidvalidity: int, dst: Folder) -> bool:
        """Whether rows() of the pair holds anything, without reading it."""
        with self._mutex:
            return self._db.execute(
                "SELECT 1 FROM messages WHERE src_folder=? AND src_uidvalidity=? AND dst_folder=? LIMIT 1",
                (folder_key(src), src_uidvalidity, folder_key(dst))).fetchone() is not None

    def copied_into(self, dsts: Iterable[Folder]) -> set[Folder]:
        """The destination folders of dsts that this state has copied (or tried to copy) into."""
        with self._mutex:
            return {dst for dst in dsts if self._db.execute(
                "SELECT 1 FROM messages WHERE dst_folder=? LIMIT 1", (folder_key(dst),)).fetchone()}

    def claims_of_others(self, dst: Folder, dst_uidvalidity: int, src: Folder,
                         others: Iterable[Folder]) -> set[int]:
        """For merged folders: the destination UIDs that OTHER source folders' rows point to."""
        keys = [folder_key(o) for o in others if o != src]
        if not keys:
            return set()
        marks = ",".join("?" * len(keys))
        with self._mutex:
            rows = self._db.execute(
                f"SELECT dst_uid, status FROM messages WHERE dst_folder=? AND dst_uidvalidity=? "
                f"AND src_folder IN ({marks})",
                (folder_key(dst), dst_uidvalidity, *keys),
            ).fetchall()
        return {uid for uid, status in rows if uid is not None and status in (DONE, ALTERED, UNVERIFIED)}

    def stored_copies(self, identities: Iterable[str]) -> dict[str, list[Stored]]:
        """Where messages with these identities were stored (identity -> its copies)."""
        out: dict[str, list[Stored]] = {}
        with self._mutex:
            for ident in identities:
                for folder, uidvalidity, uid, size in self._db.execute(
                        "SELECT dst_folder, dst_uidvalidity, dst_uid, size FROM identities WHERE identity=?", (ident,)):
                    out.setdefault(ident, []).append(Stored(folder_from_key(folder), uidvalidity, uid, size))
        return out

    def record_identities(self, dst: Folder, dst_uidvalidity: int, stored: Iterable[tuple[str, int, int]]) -> None:
        """(identity, destination UID, size) of copies just confirmed in dst."""
        self._write("INSERT OR REPLACE INTO identities VALUES (?,?,?,?,?)",
                    [(ident, folder_key(dst), dst_uidvalidity, uid, size) for ident, uid, size in stored])

    def failed(self) -> list[tuple[Folder, int, str]]:
        with self._mutex:
            cur = self._db.execute("SELECT src_folder, src_uid, reason FROM messages WHERE status=?", (FAILED,))
            return [(folder_from_key(f), uid, reason or "") for f, uid, reason in cur.fetchall()]

    def watermark(self, src: Folder, dst: Folder) -> Watermark | None:
        with self._mutex:
            r = self._db.execute(
                "SELECT options, src_uidvalidity, src_uidnext, src_messages, src_modseq, dst_uidvalidity, "
                "dst_uidnext, dst_messages, dst_modseq, settled, skipped_deleted FROM watermarks "
                "WHERE src_folder=? AND dst_folder=?",
                (folder_key(src), folder_key(dst)),
            ).fetchone()
        return Watermark(*r) if r else None

    # -- writes (each one a committed transaction: the journal must be on disk before we act) --

    def record_intents(
        self, src: Folder, src_uidvalidity: int, dst: Folder, dst_uidvalidity: int, intents: Iterable[Intent]
    ) -> None:
        now = time.time()
        self._write(
            f"INSERT OR REPLACE INTO messages ({_COLUMNS}) VALUES (?,?,?,?,?,NULL,?,?,?,?,NULL,?,?)",
            [
                (folder_key(src), src_uidvalidity, i.src_uid, folder_key(dst), dst_uidvalidity, i.size, i.sha256,
                 flags_json(tuple(i.flags)), PENDING, now, i.date or None)
                for i in intents
            ],
        )

    def record_done(
        self,
        src: Folder,
        src_uidvalidity: int,
        dst: Folder,
        dst_uidvalidity: int,
        results: Iterable[tuple[Intent, int | None]],
        status: str = DONE,
        reason: str | None = None,
    ) -> None:
        """Confirm intents (or adopt messages found on the destination) with their destination UIDs."""
        now = time.time()
        self._write(
            f"INSERT OR REPLACE INTO messages ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            [
                (folder_key(src), src_uidvalidity, i.src_uid, folder_key(dst), dst_uidvalidity, uid, i.size, i.sha256,
                 flags_json(tuple(i.flags)), status, reason, now, i.date or None)
                for i, uid in results
            ],
        )

    def record_failed(self, src: Folder, src_uidvalidity: int, dst: Folder, dst_uidvalidity: int,
                      intent: Intent, reason: str) -> None:
        self.record_done(src, src_uidvalidity, dst, dst_uidvalidity, [(intent, None)], FAILED, reason)

    def update_flags(self, src: Folder, src_uidvalidity: int, dst: Folder,
                     updates: Iterable[tuple[int, tuple[str, ...]]]) -> None:
        now = time.time()
        self._write(
            "UPDATE messages SET flags=?, updated=? "
            "WHERE src_folder=? AND src_uidvalidity=? AND src_uid=? AND dst_folder=?",
            [(flags_json(tuple(flags)), now, folder_key(src), src_uidvalidity, uid, folder_key(dst))
             for uid, flags in updates],
        )

    def forget(self, src: Folder, src_uidvalidity: int, dst: Folder, src_uids: Iterable[int]) -> None:
        self._write(
            "DELETE FROM messages WHERE src_folder=? AND src_uidvalidity=? AND src_uid=? AND dst_folder=?",
            [(folder_key(src), src_uidvalidity, uid, folder_key(dst)) for uid in src_uids],
        )

    def set_watermark(self, src: Folder, dst: Folder, wm: Watermark | None) -> None:
        """Store (or, with None, drop) the watermark of a folder pair."""
        key = (folder_key(src), folder_key(dst))
        if wm is None:
            self._write("DELETE FROM watermarks WHERE src_folder=? AND dst_folder=?", [key])
            return
        self._write(
            "INSERT OR REPLACE INTO watermarks VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            [(*key, wm.options, wm.src_uidvalidity, wm.src_uidnext, wm.src_messages, wm.src_modseq,
              wm.dst_uidvalidity, wm.dst_uidnext, wm.dst_messages, wm.dst_modseq, wm.settled, wm.skipped_deleted,
              time.time())],
        )

    def _write(self, sql: str, params: list[tuple]) -> None:
        if not params:
            return
        with self._mutex:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany(sql, params)
                self._db.execute("COMMIT")
            except sqlite3.DatabaseError as e:
                if self._db.in_transaction:  # SQLite may have ended it itself (SQLITE_FULL)
                    try:
                        self._db.execute("ROLLBACK")
                    except sqlite3.DatabaseError:
                        pass
                # Disk full, read-only, gone: the run stops at once (engine/context.py, abort).
                raise StorageError(f"cannot write state file {self.path}: {e}") from None
