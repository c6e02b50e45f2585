"""Snapshots, retention and compaction of an archive (issue 18): each backup run is a snapshot;
--as-of restores one with the mail deleted since and the flags it had; verify keeps deleted mail
apart; prune drops snapshots by borg's rules and compact frees their bytes, crash-safe; readers
are never refused while a backup writes. No server: archives as both ends, the CLI between them."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections import Counter
from pathlib import Path

import pytest

from migrator.naming import Folder
from migrator.stores.archive import ArchiveStore
from migrator.stores.archive_index import ARCHIVE_VERSION
from migrator.stores.archive_prune import Snapshot, choose
from migrator.stores.base import AppendItem
from tests.helpers import migrator, simple_message
from tests.unit.archive_helpers import archive_contents, contents

INBOX, WORK = ("INBOX",), ("Work",)
DATE = "14-Mar-2019 15:09:26 +0200"


def _mailbox(path: Path, per_folder: int = 3, size: int = 40) -> None:
    """A source 'mailbox' (an archive: the CLI reaches it without a server), every message \\Seen."""
    arc = ArchiveStore(str(path))
    try:
        n = 0
        for folder in (INBOX, WORK):
            arc.create_folder(folder)
            items = []
            for _ in range(per_folder):
                n += 1
                items.append(AppendItem(simple_message(n, body=f"message {n} " * size), ("\\Seen",), DATE))
            arc.append(folder, items)
    finally:
        arc.close()


def _change(path: Path, folder: Folder, expunge: list[int] = (), flag: int | None = None) -> None:
    arc = ArchiveStore(str(path), snapshot=False)
    try:
        arc.select(folder, readonly=False)
        if expunge:
            arc.expunge_uids(expunge)
        if flag is not None:
            arc.set_flags(flag, ["\\Flagged"], ["\\Seen"])
    finally:
        arc.close()


def _backup(src: Path, dst: Path, state: Path):
    return migrator("migrate", f"archive://{src}", f"archive://{dst}", "--quiet", "--state", str(state))


def _as_of(path: Path, run: int) -> dict[Folder, Counter]:
    return contents(ArchiveStore(str(path), create=False, readonly=True, as_of=str(run)))


def _runs(path: Path) -> list[int]:
    with sqlite3.connect(path / "index.sqlite") as db:
        return [r for (r,) in db.execute("SELECT id FROM runs ORDER BY id")]


def test_restore_as_of_the_first_snapshot_holds_mail_deleted_and_flags_changed_since(tmp_path):
    src, bk = tmp_path / "src", tmp_path / "backup"
    _mailbox(src)
    before = archive_contents(src)
    assert _backup(src, bk, tmp_path / "b.sqlite").code == 0
    _change(src, INBOX, expunge=[2], flag=1)  # deleted on the source; \Seen -> \Flagged
    assert _backup(src, bk, tmp_path / "b.sqlite").code == 0
    assert _runs(bk) == [1, 2]

    runs = migrator("archive", "ls", str(bk), "--runs")
    assert runs.code == 0, runs.text
    assert [line.split()[4:7] for line in runs.out.splitlines()[1:]] == [["6", "0", "0"], ["0", "1", "1"]]

    res = migrator("migrate", f"archive://{bk}", f"archive://{tmp_path / 'then'}", "--as-of", "1", "--quiet",
                   "--state", str(tmp_path / "r1.sqlite"))
    assert res.code == 0, res.text
    assert archive_contents(tmp_path / "then") == before  # the deleted message, and \Seen on UID 1
    res = migrator("migrate", f"archive://{bk}", f"archive://{tmp_path / 'now'}", "--as-of", "2999-01-01",
                   "--quiet", "--state", str(tmp_path / "r2.sqlite"))
    assert res.code == 0, res.text
    now = archive_contents(tmp_path / "now")
    assert now == archive_contents(src) != before and sum(now[INBOX].values()) == 2

    res = migrator("verify", f"archive://{src}", f"archive://{bk}")
    assert res.code == 0, res.text  # the deleted message is not a difference ...
    assert "kept, deleted on the source since snapshot 2: 1 message(s), UID 2" in res.out  # ... but shown

    res = migrator("migrate", f"archive://{bk}", f"archive://{tmp_path / 'x'}", "--as-of", "2001-01-01")
    assert res.code == 2 and "no snapshot taken by then" in res.err and "Traceback" not in res.text, res.text
    ls = migrator("archive", "ls", str(bk), "INBOX", "--as-of", "1")
    assert ls.code == 0 and [line.split()[0] for line in ls.out.splitlines()[1:]] == ["1", "2", "3"], ls.text


def test_a_reader_is_not_refused_while_a_backup_writes_and_sees_one_consistent_snapshot(tmp_path):
    src, bk = tmp_path / "src", tmp_path / "backup"
    _mailbox(src)
    assert _backup(src, bk, tmp_path / "b.sqlite").code == 0
    reader = ArchiveStore(str(bk), create=False, readonly=True)
    writer = ArchiveStore(str(bk))  # a backup at work: it holds the archive's lock
    try:
        reader.select(INBOX)
        writer.append(INBOX, [AppendItem(simple_message(99), (), DATE)])
        assert len(reader.list_messages()) == 3  # its snapshot: not the write committed since
        for args in (["verify", f"archive://{bk}", f"archive://{bk}"], ["archive", "ls", str(bk)],
                     ["archive", "check", str(bk)]):
            res = migrator(*args)
            assert res.code == 0 and "in use" not in res.text, (args, res.text)
        second = _backup(src, bk, tmp_path / "other.sqlite")  # two writers still refuse each other
        assert second.code == 2 and "in use by another migrator process" in second.err, second.text
    finally:
        writer.close()
        reader.close()


def _snapshot(run: int, when: str, finished: bool = True) -> Snapshot:
    t = time.mktime(time.strptime(when, "%Y-%m-%d %H:%M"))
    return Snapshot(run, t, t + 60 if finished else None)


def test_prune_keeps_what_borgs_rules_keep():
    days = [_snapshot(i + 1, f"2026-11-{d:02d} 02:00") for i, d in enumerate(range(1, 31))]  # one a night
    extra = [_snapshot(31, "2026-11-30 14:00"), _snapshot(32, "2026-11-30 15:00", finished=False)]
    kept = choose(days + extra, {"daily": 3, "weekly": 2})
    # daily: the last of each of the 3 newest days (the 14:00 run, not the 02:00 one, on the 30th);
    # weekly: the newest of the next weeks not yet kept (Sunday 22 Nov ends ISO week 47); the killed
    # run counts for no rule but, being the latest, is kept.
    assert kept == {31: "daily #1", 29: "daily #2", 28: "daily #3", 22: "weekly #1", 15: "weekly #2", 32: "latest"}
    assert set(choose(days, {"last": 2})) == {30, 29}
    with pytest.raises(Exception, match="at least one --keep"):
        choose(days, {})


def _history(path: Path) -> Path:
    """An archive with four snapshots: 6 large messages; 4 of them deleted on the source; a flag
    changed; nothing. Written by the store as runs write it (each writer's open is a run)."""
    rnd = os.urandom
    for step in range(4):
        arc = ArchiveStore(str(path))
        try:
            if step == 0:
                arc.create_folder(INBOX)
                arc.append(INBOX, [AppendItem(simple_message(i, body=rnd(12000).hex()), ("\\Seen",), DATE)
                                   for i in range(6)])
            arc.select(INBOX, readonly=False)
            if step == 1:
                arc.expunge_uids([1, 2, 3, 4])
            if step == 2:
                arc.set_flags(5, ["\\Answered"], [])
        finally:
            arc.close()
    return path


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in (path / "data").iterdir())


def test_prune_then_compact_shrink_the_archive_and_every_remaining_snapshot_restores(tmp_path):
    arc = _history(tmp_path / "a")
    snaps = {run: _as_of(arc, run) for run in _runs(arc)}
    assert sum(snaps[1][INBOX].values()) == 6 and sum(snaps[2][INBOX].values()) == 2
    dry = migrator("archive", "prune", str(arc), "--keep-last", "2", "--dry-run")
    assert dry.code == 0 and "Would prune snapshot      1" in dry.out and _runs(arc) == [1, 2, 3, 4], dry.text
    res = migrator("archive", "prune", str(arc), "--keep-last", "2")
    assert res.code == 0 and _runs(arc) == [3, 4], res.text
    before = _size(arc)
    res = migrator("archive", "compact", str(arc))
    assert res.code == 0, res.text
    assert _size(arc) < before / 2  # 4 of 6 messages freed
    for run in (3, 4):
        assert _as_of(arc, run) == snaps[run]  # flags of then included; every SHA-256 checked on read
    assert migrator("archive", "check", str(arc)).code == 0


@pytest.mark.parametrize("point", ["compact-written", "compact-switched"])
def test_compact_killed_at_any_step_then_run_again_loses_nothing(tmp_path, point):
    arc = _history(tmp_path / "a")
    assert migrator("archive", "prune", str(arc), "--keep-last", "3").code == 0
    snaps = {run: _as_of(arc, run) for run in _runs(arc)}
    before = _size(arc)
    killed = migrator("archive", "compact", str(arc), env={"MIGRATOR_TEST_CRASH_AT": f"{point}:1"})
    assert killed.code == -9, killed.text
    assert {run: _as_of(arc, run) for run in _runs(arc)} == snaps  # readable as it is, after the kill
    res = migrator("archive", "compact", str(arc))
    assert res.code == 0, res.text
    assert {run: _as_of(arc, run) for run in _runs(arc)} == snaps
    assert _size(arc) < before / 2
    assert migrator("archive", "check", str(arc)).code == 0


def test_an_archive_of_version_2_is_upgraded_in_place_its_state_becoming_snapshot_1(tmp_path):
    src, bk = tmp_path / "src", tmp_path / "backup"
    _mailbox(src)
    assert _backup(src, bk, tmp_path / "b.sqlite").code == 0
    with sqlite3.connect(bk / "index.sqlite") as db:  # back to version 2's tables
        db.execute("DROP INDEX messages_removed")
        for table, column in (("messages", "added_run"), ("messages", "removed_run"), ("folders", "created_run")):
            db.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
        db.execute("DROP TABLE runs")
        db.execute("DROP TABLE flag_history")
    (bk / "archive.json").write_text(json.dumps({"format": "migrator-archive", "version": 2}))
    assert _as_of(bk, 1) == archive_contents(src)  # a reader upgrades it (no writer at work)
    _change(src, INBOX, expunge=[1])
    assert _backup(src, bk, tmp_path / "b.sqlite").code == 0
    assert _runs(bk) == [1, 2] and json.loads((bk / "archive.json").read_text())["version"] == ARCHIVE_VERSION
    assert _as_of(bk, 2) == archive_contents(src) != _as_of(bk, 1)


def test_a_folder_deleted_on_the_source_leaves_the_latest_snapshot_and_stays_in_the_earlier_ones(tmp_path):
    """The source deletes a whole folder (here an archive source: retire_folder is its deletion):
    the next backup says so and takes it out of the latest snapshot only; restoring the latest
    does not bring it back, --as-of 1 does. Made again on the source, it comes back, new mail only."""
    src, bk, state = tmp_path / "src", tmp_path / "backup", tmp_path / "b.sqlite"
    _mailbox(src)
    before = archive_contents(src)
    assert _backup(src, bk, state).code == 0
    gone = ArchiveStore(str(src), snapshot=False)
    try:
        assert gone.retire_folder(WORK) == 3
    finally:
        gone.close()
    dry = migrator("migrate", f"archive://{src}", f"archive://{bk}", "--dry-run", "--state", str(state))
    assert dry.code == 0 and "that would leave the archive's latest snapshot: Work (3 messages)" in dry.out, dry.text
    res = migrator("migrate", f"archive://{src}", f"archive://{bk}", "--state", str(state))
    assert res.code == 0, res.text
    assert ("Folders deleted on the source since the last run, kept in the archive's earlier snapshots: "
            "Work (3 messages).") in res.out, res.text
    ls = migrator("archive", "ls", str(bk))
    assert [line.split()[-1] for line in ls.out.splitlines()[1:]] == ["INBOX"], ls.text
    ls1 = migrator("archive", "ls", str(bk), "--as-of", "1")
    assert [line.split()[-1] for line in ls1.out.splitlines()[1:]] == ["INBOX", "Work"], ls1.text
    assert _as_of(bk, 1) == before and set(_as_of(bk, 2)) == {INBOX}
    assert migrator("verify", f"archive://{src}", f"archive://{bk}").code == 0

    again = ArchiveStore(str(src), snapshot=False)  # the source makes the folder again, one new message
    try:
        again.create_folder(WORK)
        again.append(WORK, [AppendItem(simple_message(99, body="new"), (), DATE)])
    finally:
        again.close()
    assert _backup(src, bk, state).code == 0
    latest = contents(ArchiveStore(str(bk), create=False, readonly=True))
    assert latest == archive_contents(src) and sum(latest[WORK].values()) == 1
    assert _as_of(bk, 1) == before  # the first snapshot still holds the three old ones
