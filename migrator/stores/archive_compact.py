"""`migrator archive compact DIR`: free the bytes no snapshot references.

A data file holding frames no index row points at any more (messages of pruned snapshots, frames a
killed run wrote but never committed) is rewritten with only the frames rows point at, copied as
they are (their checksums with them). Crash-safe by the order of its steps, under the writer's lock:

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

from migrator.crashpoints import crash
from migrator.errors import StorageError
from migrator.stores.archive_check import archive_dir
from migrator.stores.archive_index import ArchiveIndex

_REFERENCES = "SELECT file, offset, length FROM messages UNION SELECT file, offset, length FROM damaged"


@dataclass
class CompactResult:
    files_rewritten: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    left_for_readers: int = 0  # old files a reader kept from being deleted


def compact(path: str) -> CompactResult:
    arc = ArchiveIndex.open(archive_dir(path), create=False)  # the writer: no backup meanwhile
    try:
        return _compact(arc)
    except OSError as e:
        raise StorageError(f"cannot compact archive {arc.path}: {e.strerror or e}") from None
    finally:
        arc.release()


def _compact(arc: ArchiveIndex) -> CompactResult:
    data = os.path.join(arc.path, "data")
    frames: dict[str, list[tuple[int, int]]] = {}
    for file, offset, length in arc.read(_REFERENCES):
        frames.setdefault(file, []).append((offset, length))
    result = CompactResult()
    moves: list[tuple[str, str, list[tuple[int, int, int]]]] = []  # (old, new, [(old offset, new offset, length)])
    for name in sorted(os.listdir(data)):
        if not name.endswith(".zst"):
            continue
        size = os.path.getsize(os.path.join(data, name))
        result.bytes_before += size
        used = sorted(set(frames.get(name, [])))
        needed = sum(length for _offset, length in used)
        if needed == size or not used:  # nothing to free; or nothing to keep (deleted below, at the end)
            result.bytes_after += size if used else 0
            continue
        new = "c" + arc.new_data_file(0)
        moves.append((name, new, _rewrite(os.path.join(data, name), os.path.join(data, new), used)))
        result.bytes_after += needed
    if moves:
        _fsync_dir(data)
        crash("compact-written")
        arc.write(lambda db: _switch(db, moves))
        crash("compact-switched")
    result.files_rewritten = len(moves)
    result.left_for_readers = _delete_unreferenced(arc, data)
    return result


def _rewrite(old: str, new: str, used: list[tuple[int, int]]) -> list[tuple[int, int, int]]:
    """The frames at `used` copied from old into a new file, fsync'ed; (old offset, new offset, length)."""
    placed = []
    fd = os.open(new, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    with open(old, "rb") as src, os.fdopen(fd, "wb") as dst:
        for offset, length in used:
            src.seek(offset)
            frame = src.read(length)
            placed.append((offset, dst.tell(), length))
            dst.write(frame)  # a frame the file cuts short stays as short: `archive check` names it
        dst.flush()
        os.fsync(dst.fileno())
    return placed


def _switch(db, moves: list[tuple[str, str, list[tuple[int, int, int]]]]) -> None:
    for old, new, placed in moves:
        for table in ("messages", "damaged"):
            db.executemany(f"UPDATE {table} SET file=?, offset=? WHERE file=? AND offset=? AND length=?",
                           [(new, to, old, frm, length) for frm, to, length in placed])


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
    if result.left_for_readers:
        text += (f" {result.left_for_readers} unused file(s) left while a reader has the archive open: the next "
                 "compact or backup deletes them.")
    return text
