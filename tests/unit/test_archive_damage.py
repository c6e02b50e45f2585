"""A damaged archive (issue 18): every read checks each message before its bytes are used; a
damaged message is named (folder, UID, reason) and never written anywhere, the rest is restored;
`archive check` finds exactly the damage without the source, and --repair lets the next backup
fetch it again. No server: the backup is the Engine from a memory source, restore and verify
the CLI from one archive to another."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3

import pytest
import zstandard

from migrator.stores.archive import ArchiveStore
from migrator.stores.archive_index import ARCHIVE_VERSION
from migrator.stores.base import AppendItem
from tests.helpers import migrator, simple_message
from tests.unit.archive_helpers import (
    archive_contents,
    backup,
    contents,
    cut_within,
    flip_bit,
    marker_version,
    overwrite_frame,
    remove_file_of,
    row,
    seeded_source,
    wrong_hash,
)

INBOX, CUT, GONE = ("INBOX",), ("Cut",), ("Gone",)
# The damage, one of each kind, and the messages it leaves damaged.
DAMAGE = [(flip_bit, INBOX, 2), (wrong_hash, INBOX, 3), (overwrite_frame, INBOX, 4), (cut_within, CUT, 3),
          (remove_file_of, GONE, 1)]
DAMAGED = {("INBOX", 2), ("INBOX", 3), ("INBOX", 4), ("Cut", 3), ("Gone", 1)}


@pytest.fixture
def damaged(tmp_path):
    """(source, archive, pristine copy, state file): a backup of 10 messages in 3 folders, damaged 5 ways."""
    src = seeded_source({INBOX: 6, CUT: 3, GONE: 1})
    archive, state = tmp_path / "a.archive", tmp_path / "state.sqlite"
    assert backup(src, archive, state, group_bytes=0).ok
    pristine = tmp_path / "pristine.archive"
    shutil.copytree(archive, pristine)
    for damage, folder, uid in DAMAGE:
        damage(archive, folder, uid)
    return src, archive, pristine, state


def _named(text: str, prefix: str) -> set[tuple[str, int]]:
    return {(m[1], int(m[2])) for m in re.finditer(rf"{prefix} (\S+) UID (\d+): ", text)}


def _clean_output(res) -> None:
    assert "Traceback" not in res.text and "internal error" not in res.text, res.text


def test_every_new_frame_carries_zstds_content_checksum(tmp_path):
    arc = ArchiveStore(str(tmp_path / "a"))
    try:
        arc.create_folder(INBOX)
        arc.append(INBOX, [AppendItem(simple_message(1), (), "14-Mar-2019 15:09:26 +0200")])
    finally:
        arc.close()
    file, offset, length = row(tmp_path / "a", INBOX, 1)
    frame = (tmp_path / "a" / "data" / file).read_bytes()[offset:offset + length]
    assert zstandard.get_frame_parameters(frame).has_checksum
    assert marker_version(tmp_path / "a") == ARCHIVE_VERSION


def test_an_archive_of_version_1_without_checksums_is_still_read_and_marked_current_when_written(tmp_path):
    """Version 1 frames had no checksum: they are read (their SHA-256 still checked)."""
    src = seeded_source({INBOX: 3})
    archive = tmp_path / "old"
    assert backup(src, archive, tmp_path / "s.sqlite", group_bytes=0).ok
    plain = zstandard.ZstdCompressor(level=3)  # as version 1 wrote them
    with sqlite3.connect(archive / "index.sqlite") as db:
        rows = db.execute("SELECT uid, file, offset, length FROM messages ORDER BY uid").fetchall()
        out, new_rows = b"", []
        for uid, file, offset, length in rows:
            frame = plain.compress(zstandard.ZstdDecompressor().decompress(
                (archive / "data" / file).read_bytes()[offset:offset + length]))
            new_rows.append((len(out), len(frame), uid))
            out += frame
        (archive / "data" / rows[0][1]).write_bytes(out)
        db.executemany("UPDATE messages SET offset=?, length=? WHERE uid=?", new_rows)
    (archive / "archive.json").write_text(json.dumps({"format": "migrator-archive", "version": 1}))
    assert not zstandard.get_frame_parameters(out).has_checksum
    assert archive_contents(archive) == contents(src.connect())
    assert marker_version(archive) == 1  # read only: left as it was
    assert backup(src, archive, tmp_path / "s.sqlite", group_bytes=0).ok
    assert marker_version(archive) == ARCHIVE_VERSION


def test_fetch_serves_a_damaged_message_as_its_reason_never_as_bytes(damaged):
    _src, archive, _pristine, _state = damaged
    arc = ArchiveStore(str(archive), create=False, readonly=True)
    try:
        arc.select(INBOX)
        got = {m.meta.uid: m for m in arc.fetch([1, 2, 3, 4, 5])}
        arc.select(CUT)
        cut = {m.meta.uid: m for m in arc.fetch([2, 3])}
        arc.select(GONE)
        (gone,) = arc.fetch([1])
    finally:
        arc.close()
    assert [u for u, m in got.items() if m.damage] == [2, 3, 4]
    assert all(got[u].body == b"" for u in (2, 3, 4)) and got[1].body and got[5].body
    assert "does not decode" in str(got[2].damage)  # the frame's checksum: Data corruption detected
    assert "SHA-256" in str(got[3].damage)
    assert "does not decode" in str(got[4].damage)
    assert "truncated" in str(cut[3].damage) and cut[2].damage is None
    assert "missing" in str(gone.damage)


def test_restore_writes_every_intact_message_and_no_damaged_one_exit_1(damaged, tmp_path):
    src, archive, _pristine, _state = damaged
    target = tmp_path / "restored.archive"
    res = migrator("migrate", f"archive://{archive}", f"archive://{target}", "--state", str(tmp_path / "r.sqlite"),
                   "--report", str(tmp_path / "r.json"))
    assert res.code == 1, res.text
    _clean_output(res)
    assert _named(res.text, "FAILED") == DAMAGED
    assert "FAILED INBOX UID 3: damaged in the source: its bytes do not match the SHA-256" in res.text
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["totals"]["copied"] == 10 - len(DAMAGED) and not report["folder_errors"]
    expected = contents(src.connect())
    expected[INBOX] -= {k: 1 for k, _n in list(expected[INBOX].items())[1:4]}  # source UIDs 2-4
    expected[CUT] -= {list(expected[CUT])[2]: 1}
    expected[GONE].clear()
    restored = archive_contents(target)
    assert {f: +c for f, c in restored.items()} == {f: +c for f, c in expected.items()}


def test_verify_names_the_damaged_messages_instead_of_aborting(damaged):
    _src, archive, pristine, _state = damaged
    res = migrator("verify", f"archive://{pristine}", f"archive://{archive}")
    assert res.code == 1, res.text
    _clean_output(res)
    named, folder = set(), None
    for line in res.text.splitlines():
        if " -> " in line:
            folder = line.split(" -> ")[0]
        if m := re.match(r"  damaged on the destination: UID (\d+): (.+)", line):
            named.add((folder, int(m[1])))
    assert named == DAMAGED, res.text


def test_check_names_exactly_the_damage_and_repair_lets_the_next_backup_fetch_it_again(damaged, tmp_path):
    src, archive, _pristine, state = damaged
    clean = migrator("archive", "check", str(_pristine))
    assert clean.code == 0 and "10 messages checked, 0 damaged" in clean.out, clean.text
    res = migrator("archive", "check", str(archive))
    assert res.code == 1, res.text
    _clean_output(res)
    assert _named(res.out, "DAMAGED") == DAMAGED
    repaired = migrator("archive", "check", f"archive://{archive}", "--repair")
    assert repaired.code == 1 and "5 moved aside" in repaired.out, repaired.text
    again = migrator("archive", "check", str(archive))
    assert again.code == 0 and "5 set aside by an earlier repair" in again.out, again.text

    stats = backup(src, archive, state, group_bytes=0)  # the same backup, rerun: what was set aside is fetched again
    assert stats.ok and stats.total("copied") == len(DAMAGED)
    assert migrator("archive", "check", str(archive)).code == 0
    assert archive_contents(archive) == contents(src.connect())
    target = tmp_path / "restored.archive"
    res = migrator("migrate", f"archive://{archive}", f"archive://{target}", "--state", str(tmp_path / "r.sqlite"))
    assert res.code == 0, res.text
    assert archive_contents(target) == contents(src.connect())


def test_a_damaged_index_is_one_line_and_exit_1(damaged, tmp_path):
    _src, _archive, pristine, _state = damaged
    index = pristine / "index.sqlite"
    data = bytearray(index.read_bytes())
    assert len(data) >= 3 * 4096
    data[4096:4096 * 3] = b"\xa5" * (4096 * 2)  # pages 2 and 3: tables' b-trees
    index.write_bytes(bytes(data))
    for args in (("archive", "check", str(pristine)),
                 ("migrate", f"archive://{pristine}", f"archive://{tmp_path / 'r'}", "--state", str(tmp_path / "s"))):
        res = migrator(*args)
        assert res.code == 1, res.text
        _clean_output(res)
        assert res.err.count("\n") == 1 and "index.sqlite is damaged" in res.err, res.err
