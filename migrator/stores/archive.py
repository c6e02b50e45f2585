"""Archive store: a local, zstd-compressed mailbox archive, for backups and restores.

Layout of an archive directory (mode 0700, files 0600; docs/archive-format.md specifies it):

    archive.json            {"format": "migrator-archive", "version": 4}: what this is
    index.sqlite            folders and messages: where each message's bytes are,
                            its flags, INTERNALDATE, size and fingerprint
                            (digest.py: SHA-256, NUL as 0x80) (SQLite, WAL)
    data/<folder>-<n>.zst   independent zstd frames (with zstd's content checksum), appended;
                            each writer (worker) has its own file. A frame holds one big message
                            or several small ones, each after a separator line (archive_frames.py).
                            Encrypted (--encrypt-to, version 6): each frame age-encrypted, alone
                            (archive_crypt.py)

Crash safety is borgbackup's rule: data first, index last. A batch of frames
is written and fsync'ed, then its index rows are committed in one
transaction. A crash in between leaves unreferenced bytes at the end of a data
file (cut off on the next open: archive_index.py), never an index row pointing
at missing data. UIDs are handed out by the index, so APPEND returns them like
an IMAP server with UIDPLUS.

Every body read is checked before it is served (archive_frames.py); a damaged
message is served as Message.damage, never as bytes. A message whose bytes are already in the
archive (another folder, a Gmail label) is not stored again: its row points at the same frame. The index handle, the
lock and the format version are archive_index.py's; `archive check` is
archive_check.py's.

Each writer's run is a snapshot (archive_snapshots.py): rows record the run that added them and
the run that found them gone from the source, and flag_history the flags a run changed, so an
older snapshot can be read (as_of) and expunge_uids() deletes nothing. Readers share the archive
with a writer (archive_index.py).

The archive is one Store among others: backup is migrate to an archive,
restore is migrate from one, and verify works on it unchanged.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterable, Iterator, Sequence
from typing import BinaryIO

import zstandard

from migrator.digest import fingerprint
from migrator.errors import FolderError, StorageError, UsageError
from migrator.naming import Folder, display, folder_from_key, folder_key
from migrator.stores.archive_crypt import Opener, Sealer, needs_identity
from migrator.stores.archive_frames import GROUP_BYTES, ZSTD_LEVEL, FrameReader, Place, frame_digest, frames
from migrator.stores.archive_index import MESSAGE_COLUMNS, ArchiveIndex
from migrator.stores.archive_snapshots import View, resolve
from migrator.stores.base import (
    AppendItem,
    Capabilities,
    FolderInfo,
    FolderStatus,
    Kept,
    Limits,
    Message,
    MessageMeta,
    normalize_flags,
)


class ArchiveStore:
    """One 'connection' to an archive. Several may be open in one process (one per worker)."""

    separator = None  # any component can be stored: no separator substitutes needed
    session_errors = 0  # no NO/BAD answers to count (base.Store.session_errors)
    prefix = ""

    def __init__(self, path: str, create: bool = True, readonly: bool = False, as_of: str | None = None,
                 snapshot: bool = True, group_bytes: int = GROUP_BYTES, encrypt_to: tuple[str, ...] = (),
                 identity: str | None = None, reads_bodies: bool = False):
        """readonly: a reader (never refused while a backup writes); as_of: read the snapshot it
        names (a run id or an ISO 8601 date/time; read-only). A writer records its run as a
        snapshot unless `snapshot` is False (a plan, a dry run). group_bytes: how many bytes of
        small messages share a frame (0: one message per frame). encrypt_to: the age recipients of
        a new archive (an existing one keeps its own); identity: an age identity file, to read the
        bodies of an encrypted archive (writing never needs it); reads_bodies: the caller will read
        them (a restore, verify, export): an encrypted archive without identity is refused at once."""
        self.path = os.path.abspath(path)
        self.readonly = readonly = readonly or as_of is not None
        self._arc = ArchiveIndex.open(self.path, create=create and not readonly, readonly=readonly,
                                      snapshot=snapshot, encrypt_to=encrypt_to)
        try:
            self._view = View(resolve(self._arc.db, as_of, self.path) if as_of else None,
                              folders_removed=self._arc.folders_removed)
            recipients = self._arc.recipients
            self._sealer = Sealer(recipients) if recipients and not readonly else None
            opener = Opener(identity, recipients) if recipients and identity else None
            if recipients and reads_bodies and opener is None:
                raise needs_identity(self.path, "reading it")
        except BaseException:
            self._arc.release()
            raise
        self._reader = FrameReader(os.path.join(self.path, "data"), sealed=bool(recipients), opener=opener)
        self.capabilities = Capabilities(writable=not readonly, multiappend=True, uidplus=True, keeps_history=True,
                                         fingerprints=True, live=not readonly, bodies=not self._reader.blind)
        self._selected: tuple[int, Folder] | None = None
        self._writers: dict[int, tuple[str, BinaryIO]] = {}  # folder id -> (file name, open file)
        # write_checksum: each frame carries zstd's content checksum (XXH64), checked on every read.
        self._cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True)
        self.group_bytes = group_bytes  # 0: one message per frame
        # Frames read back for dedup: the (start, sha256) of their intact messages.
        self._checked_frames: dict[tuple[str, int, int], set[tuple[int, str]]] = {}
        # The same, in an encrypted archive without identity: whether the frame is as written.
        self._sealed_frames: dict[tuple[str, int, int], bool] = {}

    # -- folders -------------------------------------------------------------------------

    def _folder(self, name: Folder) -> tuple[int, int, int]:
        rows = self._arc.read("SELECT id, uidvalidity, uidnext FROM folders WHERE name=?", (folder_key(name),))
        if not rows:
            raise FolderError(f"folder '{display(name)}' is not in archive {self.path}")
        return rows[0]

    def list_folders(self) -> list[FolderInfo]:
        where, params = self._view.folder()
        rows = self._arc.read(f"SELECT name, subscribed, special_use FROM folders WHERE {where}", params)
        named = [(folder_from_key(key), bool(sub), special) for key, sub, special in rows]
        out = [FolderInfo(name, display(name), frozenset([special] if special else []), special, sub)
               for name, sub, special in named]
        return sorted(out, key=lambda f: (f.name != ("INBOX",), f.name))

    def create_folder(self, name: Folder, special_use: str | None = None) -> None:
        """A new folder, or one found gone from the source by an earlier run brought back, with a new
        UIDVALIDITY (as a server gives a folder deleted and made again)."""
        self._writable()

        def create(db) -> None:
            validity = random.randint(1, 2**31 - 1)
            db.execute("UPDATE folders SET removed_run=NULL, uidvalidity=? WHERE name=? AND removed_run IS NOT NULL",
                       (validity, folder_key(name)))
            db.execute("INSERT OR IGNORE INTO folders(name, uidvalidity, uidnext, special_use, created_run) "
                       "VALUES (?,?,1,?,?)", (folder_key(name), validity, special_use, self._arc.run or 0))

        self._arc.write(create)

    def subscribe(self, name: Folder) -> None:
        self._writable()
        self._arc.write(lambda db: db.execute("UPDATE folders SET subscribed=1 WHERE name=?", (folder_key(name),)))

    def status(self, name: Folder) -> FolderStatus:
        fid, uidvalidity, uidnext = self._folder(name)
        member, params = self._view.member()
        ((count, size),) = self._arc.read(
            f"SELECT COUNT(*), COALESCE(SUM(size), 0) FROM messages WHERE folder_id=? AND {member}", (fid, *params))
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
        member, in_it = self._view.member("m")
        flags, of_then = self._view.flags("m")
        rows = self._arc.read(f"SELECT m.uid, m.size, {flags}, m.internaldate FROM messages m "
                              f"WHERE m.folder_id=? AND {member} ORDER BY m.uid", (*of_then, fid, *in_it))
        wanted = set(uids) if uids is not None else None
        return [
            MessageMeta(uid, size, tuple(json.loads(flags)), date)
            for uid, size, flags, date in rows
            if wanted is None or uid in wanted
        ]

    def fetch(self, uids: Sequence[int]) -> Iterator[Message]:
        """Each message's bytes are checked (zstd's frame checksum, then the SHA-256 in the index)
        before they are served; a message that fails comes with Message.damage, and no bytes."""
        fid = self._selected_id()
        member, in_it = self._view.member("m")
        flags_of, of_then = self._view.flags("m")
        for uid in uids:
            rows = self._arc.read(
                f"SELECT {self._place_of('m')}, {flags_of}, m.internaldate "
                f"FROM messages m WHERE m.folder_id=? AND m.uid=? AND {member}", (*of_then, fid, uid, *in_it))
            if not rows:
                continue
            place = Place(*rows[0][:7])
            flags, date = rows[0][7:]
            body, damage = self._reader.read(place)
            yield Message(MessageMeta(uid, place.size, tuple(json.loads(flags)), date), body, damage=damage)

    def _place_of(self, table: str) -> str:
        """The columns of a Place, as this index has them."""
        start = f"{table}.start" if self._arc.start_column == "start" else "0"
        frame = f"{table}.frame_sha256" if self._arc.frame_column == "frame_sha256" else "NULL"
        return f"{table}.file, {table}.offset, {table}.length, {table}.size, {table}.sha256, {start}, {frame}"

    def fingerprints(self, uids: Sequence[int]) -> dict[int, str]:
        """Fingerprinted.fingerprints (base.py): the SHA-256 the index keeps of each message of the
        selected folder whose frame is as written. A backup needs no more (the pool of a resumed
        run, read-backs): in an encrypted archive it is told without the identity, by the SHA-256
        of the frame as stored (archive_frames.sealed_damage)."""
        if not uids:
            return {}  # as fetch([]): asks nothing, not even which folder is selected (a dry run has none)
        fid = self._selected_id()
        member, in_it = self._view.member("m")
        out: dict[int, str] = {}
        for n in range(0, len(uids), 500):  # SQLite's bound on parameters, with room to spare
            chunk = list(uids[n:n + 500])
            rows = self._arc.read(f"SELECT m.uid, {self._place_of('m')} FROM messages m WHERE m.folder_id=? AND "
                                  f"m.uid IN ({','.join('?' * len(chunk))}) AND {member} ORDER BY m.file, m.offset",
                                  (fid, *chunk, *in_it))
            out.update((uid, place.sha256) for uid, *columns in rows for place in [Place(*columns)]
                       if self._intact(place))
        return out

    def _intact(self, place: Place) -> bool:
        """The message's frame holds its bytes intact: decoded and checked where the archive can
        be read, else (encrypted, no identity) the frame as stored against its SHA-256."""
        if self._reader.blind:
            return self._reader.sealed_damage(place) is None
        return self._reader.read(place)[1] is None

    def append(self, name: Folder, items: Sequence[AppendItem]) -> list[int | None]:
        """Data first (frames written and fsync'ed), index last (one transaction). A file that
        cannot be written (disk full, read-only, gone) raises StorageError: the run stops. Bytes
        the archive already holds intact are not written again (dedup)."""
        self._writable()
        fid = self._folder(name)[0]
        shas = [fingerprint(item.body) for item in items]
        places: dict[str, Place] = {}
        for item, sha in zip(items, shas, strict=True):
            if sha not in places and (known := self._stored(sha, len(item.body))) is not None:
                places[sha] = known
        new = list({sha: item.body for item, sha in zip(items, shas, strict=True) if sha not in places}.items())
        places.update(self._write_frames(fid, [(body, sha) for sha, body in new]))

        def commit(db) -> list[int | None]:
            (uidnext,) = db.execute("SELECT uidnext FROM folders WHERE id=?", (fid,)).fetchone()
            uids: list[int | None] = list(range(uidnext, uidnext + len(items)))
            db.executemany(
                f"INSERT INTO messages({MESSAGE_COLUMNS}, start, frame_sha256, added_run) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                [
                    (fid, uid, p.file, p.offset, p.length, p.size, sha, json.dumps(list(normalize_flags(item.flags))),
                     item.internaldate, p.start, p.frame_sha256, self._arc.run or 0)
                    for uid, item, sha in zip(uids, items, shas, strict=True) for p in [places[sha]]
                ],
            )
            db.execute("UPDATE folders SET uidnext=? WHERE id=?", (uidnext + len(items), fid))
            return uids

        return self._arc.write(commit)

    def _stored(self, sha: str, size: int) -> Place | None:
        """Where the archive already holds these bytes, if it holds them intact (read back and
        checked: a new message is never pointed at a damaged frame)."""
        rows = self._arc.read(f"SELECT {self._place_of('messages')} FROM messages WHERE sha256=? AND size=? LIMIT 1",
                              (sha, size))
        if not rows:
            return None
        place = Place(*rows[0])
        frame = (place.file, place.offset, place.length)
        if self._reader.blind:  # a backup into an encrypted archive
            if frame not in self._sealed_frames:  # each frame read and hashed once per connection
                self._sealed_frames[frame] = self._reader.sealed_damage(place) is None
            return place if self._sealed_frames[frame] else None
        if frame not in self._checked_frames:
            self._checked_frames[frame] = self._intact_in(place)
        return place if (place.start, place.sha256) in self._checked_frames[frame] else None

    def _intact_in(self, place: Place) -> set[tuple[int, str]]:
        """(start, sha256) of every message of this frame that reads back intact: the frame is
        decoded once however many of its messages come again (Gmail's All Mail: all of them)."""
        intact = self._reader.intact(place)
        if intact is None:  # a frame of version 1 or 2: one message, no separator line
            return {(place.start, place.sha256)} if self._reader.read(place)[1] is None else set()
        return intact

    def _write_frames(self, fid: int, bodies: list[tuple[bytes, str]]) -> dict[str, Place]:
        """The bodies written in frames (archive_frames.frames()) and fsync'ed: sha -> its place."""
        placed: dict[str, Place] = {}
        if not bodies:
            return placed
        try:
            file, fh = self._writer(fid)
            for content, starts in frames(bodies, self.group_bytes):
                frame = self._cctx.compress(content)
                if self._sealer is not None:  # compress, then encrypt: the frame as one age file
                    frame = self._sealer.seal(frame)
                offset, digest = fh.tell(), frame_digest(frame) if self._sealer is not None else None
                fh.write(frame)
                for i, start in starts:
                    body, sha = bodies[i]
                    placed[sha] = Place(file, offset, len(frame), len(body), sha, start, digest)
            fh.flush()
            os.fsync(fh.fileno())
        except OSError as e:
            self._drop_writer(fid)  # its buffer holds bytes that could not be written
            raise StorageError(f"cannot write to archive {self.path}: {e.strerror or e}") from None
        return placed

    def _writer(self, fid: int) -> tuple[str, BinaryIO]:
        entry = self._writers.get(fid)
        if entry is None:
            file = self._arc.new_data_file(fid)
            path = os.path.join(self.path, "data", file)
            fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
            entry = self._writers[fid] = (file, os.fdopen(fd, "ab"))
        return entry

    def _drop_writer(self, fid: int) -> None:
        entry = self._writers.pop(fid, None)
        if entry is not None:
            _close_quietly(entry[1])

    def set_flags(self, uid: int, add: Iterable[str], remove: Iterable[str]) -> None:
        self._writable()
        fid = self._selected_id()

        def change(db) -> None:
            row = db.execute("SELECT flags, added_run FROM messages WHERE folder_id=? AND uid=? AND "
                             "removed_run IS NULL", (fid, uid)).fetchone()
            if row is None:
                return
            flags = json.dumps(list(normalize_flags((set(json.loads(row[0])) | set(add)) - set(remove))))
            if flags == row[0]:
                return
            run = self._arc.run or 0
            if row[1] < run:  # earlier snapshots keep the flags they had (the first change of a run)
                db.execute("INSERT OR IGNORE INTO flag_history VALUES (?,?,?,?)", (fid, uid, run, row[0]))
            db.execute("UPDATE messages SET flags=? WHERE folder_id=? AND uid=?", (flags, fid, uid))

        self._arc.write(change)

    def expunge_uids(self, uids: Sequence[int]) -> None:
        """Out of the latest snapshot, kept in the earlier ones (archive_snapshots.py): the row is
        marked removed by this run. Its bytes go only once no snapshot holds it (prune, compact)."""
        self._writable()
        fid = self._selected_id()
        run = self._arc.run or 0
        self._arc.write(lambda db: db.executemany(
            "UPDATE messages SET removed_run=? WHERE folder_id=? AND uid=? AND removed_run IS NULL",
            [(run, fid, u) for u in uids]))

    def retire_folder(self, name: Folder) -> int:
        """The folder and its messages out of the latest snapshot, kept in the earlier ones (the
        source no longer has it); how many messages it held."""
        self._writable()
        fid = self._folder(name)[0]
        run = self._arc.run or 0

        def retire(db) -> int:
            n = db.execute("UPDATE messages SET removed_run=? WHERE folder_id=? AND removed_run IS NULL",
                           (run, fid)).rowcount
            db.execute("UPDATE folders SET removed_run=? WHERE id=? AND removed_run IS NULL", (run, fid))
            return n

        if self._selected is not None and self._selected[0] == fid:
            self._selected = None
        return int(self._arc.write(retire))

    def kept(self, name: Folder) -> list[Kept]:
        """The messages of the folder that an earlier snapshot holds and the latest does not
        (deleted on the source since), oldest removal first."""
        fid = self._folder(name)[0]
        rows = self._arc.read("SELECT uid, removed_run FROM messages WHERE folder_id=? AND removed_run IS NOT NULL "
                              "AND removed_run > added_run ORDER BY removed_run, uid", (fid,))
        return [Kept(uid, since) for uid, since in rows]

    def _writable(self) -> None:
        if self.readonly:
            raise UsageError(f"archive {self.path} is opened read-only")

    def limits(self, folders: Sequence[Folder]) -> Limits:
        return Limits()  # it says nothing of limits (and takes any message it can store)

    def close(self) -> None:
        for fid in list(self._writers):
            self._drop_writer(fid)
        if not getattr(self, "_released", False):
            self._released = True
            self._arc.release()


def _close_quietly(fh: BinaryIO) -> None:
    """A data file closed; what its buffer still holds after a failed write is lost, as it must
    be (no index row points at it: it is cut off on the next open)."""
    try:
        fh.close()
    except OSError:
        pass
