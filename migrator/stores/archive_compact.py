"""`migrator archive compact DIR`: free the bytes no snapshot references.

A data file holding bytes no index row points at any more (messages of pruned snapshots, frames a
killed run wrote but never committed) is rewritten with only what rows point at. Frames are shared
(version 4): several rows, of any folder and snapshot, may point into one frame at different
`start`s (small messages grouped, identical ones deduplicated). Each frame of such a file is

- copied as it is (its checksum with it) when rows point at every message it holds, or when it
  holds one message without separator line (versions 1 to 3), or when it cannot be regrouped
  (damaged: `archive check` still names it);
- else regrouped: decoded, the messages rows point at (each checked against the SHA-256 of its
  separator line) written into one new frame, in their order, and each row's file, offset, length
  and `start` switched to it. Whether a frame holds more than its rows point at is known without
  decoding it: the size its zstd header declares against the sum of its rows' entries.

An encrypted archive (archive_crypt.py) is compacted the same way with --identity (a regrouped
frame is encrypted again to the archive's recipients, and its rows get its new frame_sha256).
Without it, what a frame holds cannot be known: every frame a row points at is copied as it is
(its ciphertext and frame_sha256 unchanged), and only frames no row points at are freed; the
summary says how many frames were not looked into.

A frame is unreferenced only when no row of any remaining snapshot points into it (prune deletes
the rows only dropped snapshots held). Crash-safe by the order of its steps, under the writer's lock:

1. the new files are written and fsync'ed (as is the directory): nothing points at them yet;
2. the index is switched to them in one transaction (every row of every rewritten file);
3. the old files are deleted, if no reader is open (a reader's snapshot may still point at them:
   they are then left for the next compact or backup, which delete files no row points at).

A kill -9 before 2 leaves new files no row points at; after 2, old files no row points at. Either
way every message is where its row says, and the next open of a writer (a rerun of compact, a
backup) deletes the unreferenced files (archive_index.py). Crash points for the tests:
compact-written, compact-switched (migrator/crashpoints.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import BinaryIO

import zstandard

from migrator.crashpoints import crash
from migrator.errors import StorageError
from migrator.stores.archive_check import archive_dir
from migrator.stores.archive_crypt import Opener, Sealer
from migrator.stores.archive_frames import ZSTD_LEVEL, FrameReader, Place, entry_bytes, frame_digest, regroup
from migrator.stores.archive_index import ArchiveIndex

_REFERENCES = ("SELECT file, offset, length, start, size FROM messages "
               "UNION SELECT file, offset, length, start, size FROM damaged")
Frame = tuple[int, int]  # (offset, length) in its data file
# One frame of a rewritten file: (old offset, old length, new offset, new length, old start -> new
# start if it was regrouped, None if copied as it is; the new frame's SHA-256 if encrypted).
Moved = tuple[int, int, int, int, dict[int, int] | None, str | None]


@dataclass
class CompactResult:
    files_rewritten: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    left_for_readers: int = 0  # old files a reader kept from being deleted
    unopened: int = 0  # referenced frames of an encrypted archive not looked into, kept whole (no identity)


@dataclass
class _Crypt:
    """An encrypted archive's frames: read with the identity (if given), written to its recipients."""

    reader: FrameReader
    sealer: Sealer | None = None


def compact(path: str, identity: str | None = None) -> CompactResult:
    arc = ArchiveIndex.open(archive_dir(path), create=False)  # the writer: no backup meanwhile
    try:
        recipients = arc.recipients
        opener = Opener(identity, recipients) if recipients and identity else None
        data = os.path.join(arc.path, "data")
        crypt = _Crypt(FrameReader(data, sealed=bool(recipients), opener=opener),
                       Sealer(recipients) if recipients else None)
        return _compact(arc, crypt)
    except OSError as e:
        raise StorageError(f"cannot compact archive {arc.path}: {e.strerror or e}") from None
    finally:
        arc.release()


def _compact(arc: ArchiveIndex, crypt: _Crypt) -> CompactResult:
    data = os.path.join(arc.path, "data")
    frames: dict[str, dict[Frame, dict[int, int]]] = {}  # file -> frame -> {start: size} rows point at
    for file, offset, length, start, size in arc.read(_REFERENCES):
        frames.setdefault(file, {}).setdefault((offset, length), {})[start] = size
    result = CompactResult()
    moves: list[tuple[str, str, list[Moved]]] = []
    for name in sorted(os.listdir(data)):
        if not name.endswith(".zst"):
            continue
        size = os.path.getsize(os.path.join(data, name))
        result.bytes_before += size
        used = frames.get(name, {})
        if not used:
            continue  # nothing to keep: deleted below, at the end
        if crypt.reader.blind:  # encrypted, no identity: frames cannot be looked into
            partial: set[Frame] = set()
            result.unopened += sum(1 for starts in used.values() if set(starts) != {0})
        else:
            with open(os.path.join(data, name), "rb") as fh:
                partial = {frame for frame, starts in used.items() if _partly_used(fh, name, frame, starts, crypt)}
        if sum(length for _offset, length in used) == size and not partial:
            result.bytes_after += size  # nothing to free
            continue
        new = "c" + arc.new_data_file(0)
        moves.append((name, new, _rewrite(data, name, new, used, partial, crypt)))
        result.bytes_after += os.path.getsize(os.path.join(data, new))
    if moves:
        _fsync_dir(data)
        crash("compact-written")
        arc.write(lambda db: _switch(db, moves))
        crash("compact-switched")
    result.files_rewritten = len(moves)
    result.left_for_readers = _delete_unreferenced(arc, data)
    return result


def _partly_used(fh: BinaryIO, name: str, frame: Frame, starts: dict[int, int], crypt: _Crypt) -> bool:
    """The frame holds messages no row points at: it decodes to more than its rows' entries."""
    if set(starts) == {0}:
        return False  # one message, no separator line (versions 1 to 3)
    offset, length = frame
    if crypt.sealer is not None:  # encrypted: decrypted and decoded (checked) to know; damaged: copied as it is
        whole = crypt.reader.decoded(Place(name, offset, length, 0, ""))
        return whole is not None and len(whole) != sum(entry_bytes(size) for size in starts.values())
    fh.seek(offset)
    try:
        declared = zstandard.get_frame_parameters(fh.read(min(length, 18))).content_size  # 18: a header's most
    except zstandard.ZstdError:
        return False  # damaged: copied as it is
    if declared == zstandard.CONTENTSIZE_UNKNOWN:
        return False
    return declared != sum(entry_bytes(size) for size in starts.values())


def _rewrite(data: str, old: str, new: str, used: dict[Frame, dict[int, int]], partial: set[Frame],
             crypt: _Crypt) -> list[Moved]:
    """The frames rows point at, copied or regrouped (the module's docstring) from old into a new
    file, fsync'ed."""
    placed: list[Moved] = []
    cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True)
    reader = crypt.reader
    fd = os.open(os.path.join(data, new), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    with open(os.path.join(data, old), "rb") as src, os.fdopen(fd, "wb") as dst:
        for offset, length in sorted(used):
            frame, starts = b"", None
            decoded = reader.decoded(Place(old, offset, length, 0, "")) if (offset, length) in partial else None
            kept = regroup(decoded, set(used[offset, length])) if decoded is not None else None
            if kept is not None:
                frame, starts = cctx.compress(kept[0]), kept[1]
                if crypt.sealer is not None:
                    frame = crypt.sealer.seal(frame)
            else:
                src.seek(offset)
                frame = src.read(length)  # a frame the file cuts short stays as short: `archive check` names it
            digest = frame_digest(frame) if crypt.sealer is not None else None
            placed.append((offset, length, dst.tell(), len(frame), starts, digest))
            dst.write(frame)
        dst.flush()
        os.fsync(dst.fileno())
    return placed


def _switch(db, moves: list[tuple[str, str, list[Moved]]]) -> None:
    """Every row of every rewritten file pointed at its new place (the caller's one transaction)."""
    for old, new, placed in moves:
        copied = [(new, to, old, frm, length) for frm, length, to, _n, starts, _d in placed if starts is None]
        regrouped = [(new, to, new_length, now, digest, old, frm, length, was)
                     for frm, length, to, new_length, starts, digest in placed if starts is not None
                     for was, now in starts.items()]
        for table in ("messages", "damaged"):
            db.executemany(f"UPDATE {table} SET file=?, offset=? WHERE file=? AND offset=? AND length=?", copied)
            db.executemany(f"UPDATE {table} SET file=?, offset=?, length=?, start=?, frame_sha256=? "
                           "WHERE file=? AND offset=? AND length=? AND start=?", regrouped)


def _delete_unreferenced(arc: ArchiveIndex, data: str) -> int:
    """Every data file no row points at deleted, unless a reader is open; how many were left."""
    referenced = {file for (file,) in arc.read("SELECT file FROM messages UNION SELECT file FROM damaged")}
    unused = [n for n in os.listdir(data) if n.endswith(".zst") and n not in referenced]
    alone = arc.no_readers()
    if alone is None:
        return len(unused)
    try:
        for name in unused:
            os.unlink(os.path.join(data, name))
        _fsync_dir(data)
    finally:
        alone.close()
    return 0


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def render_compact(result: CompactResult, path: str) -> str:
    freed = result.bytes_before - result.bytes_after
    text = (f"{archive_dir(path)}: {result.files_rewritten} data file(s) rewritten; {result.bytes_before} bytes of "
            f"data before, {result.bytes_after} after ({freed} freed).")
    if result.unopened:
        text += (f" Encrypted archive, no --identity: {result.unopened} frame(s) still referenced were not looked "
                 "into, and kept whole (give --identity to also free what they hold that no snapshot references).")
    if result.left_for_readers:
        text += (f" {result.left_for_readers} unused file(s) left while a reader has the archive open: the next "
                 "compact or backup deletes them.")
    return text
