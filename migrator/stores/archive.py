"""Archive store: a local, zstd-compressed mailbox archive, for backups and restores.

Layout of an archive directory (mode 0700, files 0600):

    archive.json            {"format": "migrator-archive", "version": 1}: what this is
    index.sqlite            folders and messages: where each message's bytes are,
                            its flags, INTERNALDATE, size and fingerprint
                            (digest.py: SHA-256, NUL as 0x80) (SQLite, WAL)
    data/<folder>-<n>.zst   message bytes, one independent zstd frame per message,
                            appended; each writer (worker) has its own file

Crash safety is borgbackup's rule: data first, index last. A batch of frames
is written and fsync'ed, then its index rows are committed in one
transaction. A crash in between leaves unreferenced bytes at the end of a data
file, never an index row pointing at missing data. UIDs are handed out by the
index, so APPEND returns them like an IMAP server with UIDPLUS.

The archive is one Store among others: backup is migrate to an archive,
restore is migrate from one, and verify works on it unchanged.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import BinaryIO

import zstandard

from migrator.digest import fingerprint
from migrator.errors import FolderError, StateError, UsageError
from migrator.fsutil import ensure_private_dir, lock_exclusive, write_private
from migrator.naming import Folder, display, folder_from_key, folder_key
from migrator.stores.base import (
    AppendItem,
    Capabilities,
    FolderInfo,
    FolderStatus,
    Limits,
    Message,
    MessageMeta,
    normalize_flags,
)

ARCHIVE_FORMAT = "migrator-archive"
ARCHIVE_VERSION = 1
ZSTD_LEVEL = 3  # fast, and mail compresses well at this level already

_SCHEMA = """
CREATE TABLE IF NOT EXISTS folders (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    uidvalidity INTEGER NOT NULL,
    uidnext INTEGER NOT NULL,
    subscribed INTEGER NOT NULL DEFAULT 0,
    special_use TEXT
);
CREATE TABLE IF NOT EXISTS messages (
    folder_id INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    file TEXT NOT NULL,
    offset INTEGER NOT NULL,
    length INTEGER NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    flags TEXT NOT NULL,
    internaldate TEXT NOT NULL,
    PRIMARY KEY (folder_id, uid)
);
"""


class _Archive:
    """The shared, process-wide handle on one archive directory (index + lock)."""

    _registry: dict[str, _Archive] = {}
    _registry_lock = threading.Lock()

    @classmethod
    def open(cls, path: str, create: bool) -> _Archive:
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
        self.closed = False
        self.lock = threading.RLock()
        marker = os.path.join(path, "archive.json")
        if not os.path.exists(marker):
            if not create:
                raise UsageError(f"{path} is not a migrator archive (no archive.json)")
            if os.path.isdir(path) and os.listdir(path):
                raise UsageError(f"{path} exists and is not empty, and is not a migrator archive")
            ensure_private_dir(path)
            ensure_private_dir(os.path.join(path, "data"))
            write_private(marker, json.dumps({"format": ARCHIVE_FORMAT, "version": ARCHIVE_VERSION}) + "\n")
        try:
            with open(marker, encoding="utf-8") as fh:
                meta = json.load(fh)
        except (OSError, ValueError) as e:
            raise StateError(f"{marker} is unreadable: {e}") from None
        if meta.get("format") != ARCHIVE_FORMAT:
            raise StateError(f"{path} is not a migrator archive")
        if meta.get("version") != ARCHIVE_VERSION:
            raise StateError(f"archive {path} has version {meta.get('version')}; "
                             f"this migrator reads version {ARCHIVE_VERSION}")
        self._lock_fh = lock_exclusive(os.path.join(path, "lock"),
                                       f"archive {path} is in use by another migrator process")
        index = os.path.join(path, "index.sqlite")
        if not os.path.exists(index):
            os.close(os.open(index, os.O_CREAT | os.O_WRONLY, 0o600))
        self.db = sqlite3.connect(index, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(_SCHEMA)
        self._file_counter = 0

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


class ArchiveStore:
    """One 'connection' to an archive. Several may be open in one process (one per worker)."""

    separator = None  # any component can be stored: no separator substitutes needed
    prefix = ""

    def __init__(self, path: str, create: bool = True, readonly: bool = False):
        self.path = os.path.abspath(path)
        self.readonly = readonly
        self._arc = _Archive.open(self.path, create=create and not readonly)
        self.capabilities = Capabilities(writable=not readonly, multiappend=True, uidplus=True)
        self._selected: tuple[int, Folder] | None = None
        self._writers: dict[int, tuple[str, BinaryIO]] = {}  # folder id -> (file name, open file)
        self._cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
        self._dctx = zstandard.ZstdDecompressor()

    # -- folders -------------------------------------------------------------------------

    def _folder(self, name: Folder) -> tuple[int, int, int]:
        with self._arc.lock:
            row = self._arc.db.execute(
                "SELECT id, uidvalidity, uidnext FROM folders WHERE name=?", (folder_key(name),)
            ).fetchone()
        if row is None:
            raise FolderError(f"folder '{display(name)}' is not in archive {self.path}")
        return row

    def list_folders(self) -> list[FolderInfo]:
        with self._arc.lock:
            rows = self._arc.db.execute("SELECT name, subscribed, special_use FROM folders").fetchall()
        named = [(folder_from_key(key), bool(sub), special) for key, sub, special in rows]
        out = [FolderInfo(name, display(name), frozenset([special] if special else []), special, sub)
               for name, sub, special in named]
        return sorted(out, key=lambda f: (f.name != ("INBOX",), f.name))

    def create_folder(self, name: Folder, special_use: str | None = None) -> None:
        self._writable()
        with self._arc.lock:
            self._arc.db.execute(
                "INSERT OR IGNORE INTO folders(name, uidvalidity, uidnext, special_use) VALUES (?,?,1,?)",
                (folder_key(name), random.randint(1, 2**31 - 1), special_use),
            )

    def subscribe(self, name: Folder) -> None:
        self._writable()
        with self._arc.lock:
            self._arc.db.execute("UPDATE folders SET subscribed=1 WHERE name=?", (folder_key(name),))

    def status(self, name: Folder) -> FolderStatus:
        fid, uidvalidity, uidnext = self._folder(name)
        with self._arc.lock:
            count, size = self._arc.db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM messages WHERE folder_id=?", (fid,)
            ).fetchone()
        return FolderStatus(uidvalidity=uidvalidity, uidnext=uidnext, messages=count, size=size)

    def select(self, name: Folder, readonly: bool = True) -> FolderStatus:
        st = self.status(name)
        self._selected = (self._folder(name)[0], name)
        return st

    def _selected_id(self) -> int:
        if self._selected is None:
            raise FolderError("no folder selected")
        return self._selected[0]

    # -- messages ------------------------------------------------------------------------

    def list_messages(self, uids: Sequence[int] | None = None) -> list[MessageMeta]:
        fid = self._selected_id()
        with self._arc.lock:
            rows = self._arc.db.execute(
                "SELECT uid, size, flags, internaldate FROM messages WHERE folder_id=? ORDER BY uid", (fid,)
            ).fetchall()
        wanted = set(uids) if uids is not None else None
        return [
            MessageMeta(uid, size, tuple(json.loads(flags)), date)
            for uid, size, flags, date in rows
            if wanted is None or uid in wanted
        ]

    def fetch(self, uids: Sequence[int]) -> Iterator[Message]:
        fid = self._selected_id()
        for uid in uids:
            with self._arc.lock:
                row = self._arc.db.execute(
                    "SELECT file, offset, length, size, flags, internaldate FROM messages WHERE folder_id=? AND uid=?",
                    (fid, uid),
                ).fetchone()
            if row is None:
                continue
            file, offset, length, size, flags, date = row
            with open(os.path.join(self.path, "data", file), "rb") as fh:
                fh.seek(offset)
                frame = fh.read(length)
            body = self._dctx.decompress(frame, max_output_size=size)
            yield Message(MessageMeta(uid, size, tuple(json.loads(flags)), date), body)

    def append(self, name: Folder, items: Sequence[AppendItem]) -> list[int | None]:
        """Data first (frames written and fsync'ed), index last (one transaction)."""
        self._writable()
        fid = self._folder(name)[0]
        file, fh = self._writer(fid)
        placed = []
        for item in items:
            frame = self._cctx.compress(item.body)
            offset = fh.tell()
            fh.write(frame)
            placed.append((item, offset, len(frame)))
        fh.flush()
        os.fsync(fh.fileno())
        with self._arc.lock:
            db = self._arc.db
            db.execute("BEGIN IMMEDIATE")
            try:
                (uidnext,) = db.execute("SELECT uidnext FROM folders WHERE id=?", (fid,)).fetchone()
                uids: list[int | None] = list(range(uidnext, uidnext + len(placed)))
                db.executemany(
                    "INSERT INTO messages VALUES (?,?,?,?,?,?,?,?,?)",
                    [
                        (fid, uid, file, offset, length, len(item.body), fingerprint(item.body),
                         json.dumps(list(normalize_flags(item.flags))), item.internaldate)
                        for uid, (item, offset, length) in zip(uids, placed, strict=True)
                    ],
                )
                db.execute("UPDATE folders SET uidnext=? WHERE id=?", (uidnext + len(placed), fid))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return uids

    def _writer(self, fid: int) -> tuple[str, BinaryIO]:
        entry = self._writers.get(fid)
        if entry is None:
            file = self._arc.new_data_file(fid)
            path = os.path.join(self.path, "data", file)
            fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
            entry = self._writers[fid] = (file, os.fdopen(fd, "ab"))
        return entry

    def set_flags(self, uid: int, add: Iterable[str], remove: Iterable[str]) -> None:
        self._writable()
        fid = self._selected_id()
        with self._arc.lock:
            row = self._arc.db.execute("SELECT flags FROM messages WHERE folder_id=? AND uid=?", (fid, uid)).fetchone()
            if row is None:
                return
            flags = (set(json.loads(row[0])) | set(add)) - set(remove)
            self._arc.db.execute(
                "UPDATE messages SET flags=? WHERE folder_id=? AND uid=?",
                (json.dumps(list(normalize_flags(flags))), fid, uid),
            )

    def expunge_uids(self, uids: Sequence[int]) -> None:
        """Drop index rows; their bytes stay in the data files until a future compaction."""
        self._writable()
        fid = self._selected_id()
        with self._arc.lock:
            self._arc.db.executemany("DELETE FROM messages WHERE folder_id=? AND uid=?", [(fid, u) for u in uids])

    def _writable(self) -> None:
        if self.readonly:
            raise UsageError(f"archive {self.path} is opened read-only")

    def limits(self, folders: Sequence[Folder]) -> Limits:
        return Limits()  # it says nothing of limits (and takes any message it can store)

    def close(self) -> None:
        for _file, fh in self._writers.values():
            fh.close()
        self._writers.clear()
        if not getattr(self, "_released", False):
            self._released = True
            self._arc.release()
