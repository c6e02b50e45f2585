"""`migrator archive check DIR [--repair]`: an archive checked alone, without its source.

Checked: the index (SQLite's own quick_check), then every message row: its data file is there,
its frame lies within the file, decodes (with zstd's content checksum where the frame has one)
to the size the index says, and its bytes match the SHA-256 in the index (archive_frames.py).
An encrypted archive is checked so with --identity; without it, as far as can be without
decrypting: each frame as stored against the SHA-256 the index keeps of it (frame_sha256), and
that it is an age file; the messages' contents are then not checked, and the summary says so.

--repair moves each damaged row from `messages` to `damaged` (with its reason and when), in one
transaction. The message is then no longer in the archive's folder: the next backup run finds
it missing and fetches it again from the source, if the source still has it. Its frame's bytes
stay in the data file, and its row in `damaged`, for whoever wants to look at them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from migrator.errors import StorageError
from migrator.naming import display, folder_from_key
from migrator.stores.archive_crypt import Opener
from migrator.stores.archive_frames import FrameReader, Place
from migrator.stores.archive_index import MESSAGE_COLUMNS, ArchiveIndex


@dataclass(frozen=True)
class Damage:
    folder: str  # as shown to users
    uid: int
    reason: str


@dataclass
class CheckResult:
    path: str
    messages: int = 0  # message rows checked
    damaged: list[Damage] = field(default_factory=list)
    moved: int = 0  # --repair: rows moved to the damaged table
    set_aside: int = 0  # rows already in the damaged table (an earlier repair)
    sealed_only: bool = False  # encrypted, no identity: frames checked as stored, contents not

    @property
    def clean(self) -> bool:
        return not self.damaged


def archive_dir(arg: str) -> str:
    """DIR, or an archive:// URL naming it (as `migrate` takes it)."""
    return arg[len("archive://"):] if arg.startswith("archive://") else arg


def check_archive(path: str, repair: bool = False, identity: str | None = None) -> CheckResult:
    """Raises StorageError if the index itself is damaged (nothing below it can be trusted)."""
    # A reader (never refused while a backup writes), unless it repairs.
    arc = ArchiveIndex.open(archive_dir(path), create=False, readonly=not repair)
    try:
        opener = Opener(identity, arc.recipients) if arc.recipients and identity else None
        reader = FrameReader(f"{arc.path}/data", sealed=bool(arc.recipients), opener=opener)
        result = CheckResult(arc.path, sealed_only=reader.blind)
        problems = [row[0] for row in arc.read("PRAGMA quick_check")]
        if problems != ["ok"]:
            raise StorageError(f"archive {arc.path}: index.sqlite is damaged ({problems[0]})")
        # In frame order: a frame of several messages is decoded once.
        rows = arc.read(
            "SELECT m.folder_id, m.uid, f.name, m.file, m.offset, m.length, m.size, m.sha256, "
            f"{arc.start_column}, {arc.frame_column} FROM messages m LEFT JOIN folders f ON f.id = m.folder_id "
            "ORDER BY m.file, m.offset, f.name, m.uid")
        result.messages = len(rows)
        bad: list[tuple[int, int, str]] = []
        for fid, uid, name, *columns in rows:
            if name is None:
                reason: str | None = f"its folder (id {fid}) is not in the index"
            elif result.sealed_only:
                reason = reader.sealed_damage(Place(*columns))
            else:
                _body, reason = reader.read(Place(*columns))
            if reason is not None:
                shown = display(folder_from_key(name)) if name is not None else f"(folder id {fid})"
                result.damaged.append(Damage(shown, uid, reason))
                bad.append((fid, uid, reason))
        result.damaged.sort(key=lambda d: (d.folder, d.uid))
        if repair and bad:
            result.moved = _set_aside(arc, bad)
        (result.set_aside,) = arc.read("SELECT COUNT(*) FROM damaged")[0]
        return result
    finally:
        arc.release()


def _set_aside(arc: ArchiveIndex, bad: list[tuple[int, int, str]]) -> int:
    """The damaged rows moved to the `damaged` table, in one transaction."""
    now = time.time()
    columns = (MESSAGE_COLUMNS + (", start" if arc.start_column == "start" else "")
               + (", frame_sha256" if arc.frame_column == "frame_sha256" else ""))

    def move(db) -> int:
        for fid, uid, reason in bad:
            db.execute(f"INSERT OR REPLACE INTO damaged({columns}, reason, found) SELECT {columns}, ?, ? "
                       "FROM messages WHERE folder_id=? AND uid=?", (reason, now, fid, uid))
            db.execute("DELETE FROM messages WHERE folder_id=? AND uid=?", (fid, uid))
        return len(bad)

    return arc.write(move)


def render_check(result: CheckResult, repair: bool) -> str:
    lines = [f"DAMAGED {d.folder} UID {d.uid}: {d.reason}" for d in result.damaged]
    n = len(result.damaged)
    summary = f"{result.path}: {result.messages} messages checked, {n} damaged."
    if repair and n:
        summary += (f" {result.moved} moved aside (table `damaged`): the next backup run fetches them again "
                    "from the source if it still has them.")
    elif n:
        summary += " Run with --repair to move them aside, so that the next backup fetches them again."
    if result.set_aside and not (repair and n):
        summary += f" {result.set_aside} set aside by an earlier repair."
    if result.sealed_only:
        summary += (" Encrypted archive, no --identity: each frame was checked against its SHA-256 as stored; "
                    "the messages' contents were not checked.")
    lines.append(summary)
    return "\n".join(lines)
