"""Version 4: snapshots (version 3) and grouped, deduplicated frames together. Compaction of frames
shared by rows of several folders and snapshots; a snapshot archive of version 3 upgraded in place
(and read as it is while a writer of version 3 holds it); `archive export --as-of`. No server."""

from __future__ import annotations

import json
import os
import re
import sqlite3
from collections import Counter
from pathlib import Path

import pytest
import zstandard

from migrator.fsutil import lock_exclusive
from migrator.naming import Folder
from migrator.stores import archive_frames
from migrator.stores.archive import ArchiveStore
from migrator.stores.archive_check import check_archive
from migrator.stores.archive_compact import compact
from migrator.stores.archive_index import ARCHIVE_VERSION
from migrator.stores.archive_prune import prune
from migrator.stores.base import AppendItem
from tests.helpers import migrator, simple_message
from tests.unit.archive_helpers import contents, marker_version

INBOX, COPY = ("INBOX",), ("Copy",)
DATE = "14-Mar-2019 15:09:26 +0200"


def _as_of(path: Path, run: int | None = None) -> dict[Folder, Counter]:
    return contents(ArchiveStore(str(path), create=False, readonly=True, as_of=None if run is None else str(run)))


def _runs_of(path: Path, steps, **opts) -> None:
    """One writer (one run, one snapshot) per step; each step gets the open store."""
    for step in steps:
        arc = ArchiveStore(str(path), **opts)
        try:
            step(arc)
        finally:
            arc.close()


def _rows(path: Path) -> dict[tuple[str, int], tuple[str, int, int, int]]:
    with sqlite3.connect(path / "index.sqlite") as db:
        return {(json.loads(name)[0], uid): (file, offset, length, start) for name, uid, file, offset, length, start in
                db.execute("SELECT f.name, m.uid, m.file, m.offset, m.length, m.start FROM messages m "
                           "JOIN folders f ON f.id = m.folder_id")}


def _decoded_data(path: Path) -> bytes:
    out = b""
    for f in sorted((path / "data").iterdir()):
        with open(f, "rb") as fh, zstandard.ZstdDecompressor().stream_reader(fh, read_across_frames=True) as zr:
            out += zr.read()
    return out


@pytest.mark.parametrize("digits", [64, 16], ids=["frames-of-version-4", "frames-of-version-5"])
def test_compact_regroups_a_frame_shared_by_folders_and_snapshots_keeping_every_message_readable(
        tmp_path, monkeypatch, digits):
    """Also for frames version 4 wrote (separator lines with all 64 digits of the SHA-256): read,
    deduplicated against, and regrouped into this version's (16 digits)."""
    arc_dir = tmp_path / "a"
    bodies = [simple_message(n, body=os.urandom(6000).hex()) for n in range(1, 7)]

    def first(arc):  # one grouped frame for INBOX's six; Copy's two point into it (dedup)
        monkeypatch.setattr(archive_frames, "SEPARATOR_SHA", digits)
        for folder in (INBOX, COPY):
            arc.create_folder(folder)
        arc.append(INBOX, [AppendItem(b, ("\\Seen",), DATE) for b in bodies])
        arc.append(COPY, [AppendItem(b, (), DATE) for b in bodies[:2]])
        monkeypatch.undo()

    def expunge(uids):
        def step(arc):
            arc.select(INBOX, readonly=False)
            arc.expunge_uids(uids)
        return step

    _runs_of(arc_dir, [first, expunge([1, 2, 3]), expunge([4])])
    rows = _rows(arc_dir)
    assert len({rows[k][:3] for k in rows}) == 1  # eight rows, one frame
    assert rows["Copy", 1] == rows["INBOX", 1] and rows["Copy", 2] == rows["INBOX", 2]
    prune(str(arc_dir), {"last": 2}, dry_run=False)  # snapshot 1 goes: INBOX 1-3 with it; 4 stays (snapshot 2)
    snaps = {run: _as_of(arc_dir, run) for run in (2, 3)}
    assert sum(snaps[2][INBOX].values()) == 3 and sum(snaps[3][INBOX].values()) == 2
    before = sum(f.stat().st_size for f in (arc_dir / "data").iterdir())

    result = compact(str(arc_dir))

    assert result.files_rewritten == 1 and result.bytes_after < before * 0.92  # one message in six freed
    kept = _decoded_data(arc_dir)
    assert {len(d) for d in re.findall(rb"migrator-archive-message \d+ ([0-9a-f]+)\n", kept)} == {16}
    assert bodies[2] not in kept and all(b in kept for b in bodies[:2] + bodies[3:])
    assert {run: _as_of(arc_dir, run) for run in (2, 3)} == snaps  # every SHA-256 checked on the way
    rows = _rows(arc_dir)
    assert len({rows[k][:3] for k in rows}) == 1  # still one (new) frame for all five rows
    assert sorted(rows) == [("Copy", 1), ("Copy", 2), ("INBOX", 4), ("INBOX", 5), ("INBOX", 6)]
    assert len({rows[k][3] for k in rows}) == 5  # each at its own new `start`
    checked = check_archive(str(arc_dir))
    assert checked.clean and checked.messages == 5


def _to_version_3(path: Path) -> None:
    """A snapshot archive as version 3 wrote it: one message per frame, no separator line, no
    `start` column, no dedup index."""
    cctx = zstandard.ZstdCompressor(level=3, write_checksum=True)
    with sqlite3.connect(path / "index.sqlite") as db:
        rows = db.execute("SELECT folder_id, uid, file, offset, length, start, size FROM messages "
                          "ORDER BY file, offset").fetchall()
        files: dict[str, bytes] = {}
        for fid, uid, file, offset, length, start, size in rows:
            frame = (path / "data" / file).read_bytes()[offset:offset + length]
            plain = cctx.compress(zstandard.ZstdDecompressor().decompress(frame)[start:start + size])
            out = files.get(file, b"")
            db.execute("UPDATE messages SET offset=?, length=? WHERE folder_id=? AND uid=?",
                       (len(out), len(plain), fid, uid))
            files[file] = out + plain
        db.execute("DROP INDEX messages_sha256")
        db.execute("ALTER TABLE messages DROP COLUMN start")
        db.execute("ALTER TABLE damaged DROP COLUMN start")
        db.execute("ALTER TABLE folders DROP COLUMN removed_run")
    for file, data in files.items():
        (path / "data" / file).write_bytes(data)
    (path / "archive.json").write_text(json.dumps({"format": "migrator-archive", "version": 3}))


def _columns(path: Path) -> set[str]:
    with sqlite3.connect(path / "index.sqlite") as db:
        return {r[1] for r in db.execute("PRAGMA table_info(messages)")} | {
            r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='index'")}


def test_a_snapshot_archive_of_version_3_is_read_under_its_writer_then_upgraded_in_place(tmp_path):
    arc_dir = tmp_path / "a"
    bodies = [simple_message(n, body=f"message {n} " * 40) for n in range(1, 5)]

    def first(arc):
        arc.create_folder(INBOX)
        arc.append(INBOX, [AppendItem(b, ("\\Seen",), DATE) for b in bodies])

    def second(arc):
        arc.select(INBOX, readonly=False)
        arc.expunge_uids([1])
        arc.set_flags(2, ["\\Flagged"], [])

    _runs_of(arc_dir, [first, second], group_bytes=0)
    snaps = {run: _as_of(arc_dir, run) for run in (1, 2)}
    _to_version_3(arc_dir)

    held = lock_exclusive(str(arc_dir / "lock"), "busy")  # a writer of version 3 at work
    try:
        assert {run: _as_of(arc_dir, run) for run in (1, 2)} == snaps  # `start` read as 0
    finally:
        held.close()
    assert "start" not in _columns(arc_dir) and marker_version(arc_dir) == 3  # nothing upgraded under it

    def third(arc):  # bytes it holds (dedup against a frame of version 3) and new ones
        new = b"Subject: new\r\n\r\nnew\r\n"
        assert arc.append(INBOX, [AppendItem(bodies[1], (), DATE), AppendItem(new, (), DATE)]) == [5, 6]

    _runs_of(arc_dir, [third])
    assert {"start", "messages_sha256", "added_run", "removed_run"} <= _columns(arc_dir)
    assert marker_version(arc_dir) == ARCHIVE_VERSION == 5
    rows = _rows(arc_dir)
    assert rows["INBOX", 5] == rows["INBOX", 2] and rows["INBOX", 2][3] == 0 and rows["INBOX", 6][3] > 0
    assert {run: _as_of(arc_dir, run) for run in (1, 2)} == snaps  # the old snapshots as they were
    assert sum(_as_of(arc_dir, 3)[INBOX].values()) == 5
    assert check_archive(str(arc_dir)).clean


def test_export_as_of_writes_that_snapshot_deleted_mail_included(tmp_path):
    arc_dir = tmp_path / "a"
    bodies = [simple_message(n, body=f"message {n} " * 20) for n in range(1, 4)]

    def first(arc):
        arc.create_folder(INBOX)
        arc.append(INBOX, [AppendItem(b, (), DATE) for b in bodies])

    def second(arc):
        arc.select(INBOX, readonly=False)
        arc.expunge_uids([1, 2])

    _runs_of(arc_dir, [first, second])
    old = migrator("archive", "export", str(arc_dir), str(tmp_path / "old"), "--eml", "--as-of", "1")
    new = migrator("archive", "export", str(arc_dir), str(tmp_path / "new"), "--eml")
    assert old.code == 0 and new.code == 0, old.text + new.text
    assert sorted(p.read_bytes() for p in (tmp_path / "old" / "INBOX").iterdir()) == sorted(bodies)
    assert [p.read_bytes() for p in (tmp_path / "new" / "INBOX").iterdir()] == [bodies[2]]
    none = migrator("archive", "export", str(arc_dir), str(tmp_path / "none"), "--eml", "--as-of", "9")
    assert none.code == 2 and "no snapshot 9" in none.text and "Traceback" not in none.text
