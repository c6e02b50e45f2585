"""The archive's layout of version 3 (issue 18): a message in several folders stored once (dedup),
small messages grouped into one frame (a bit flip there damages exactly that frame's messages,
named), separator lines so that `zstd -dc` splits into the messages, and an archive of version 2
read as it is, then upgraded in place when written. No server: memory sources, the CLI."""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import subprocess
from pathlib import Path

import zstandard

from migrator.digest import fingerprint
from migrator.stores.archive import ArchiveStore
from migrator.stores.archive_index import ARCHIVE_VERSION
from migrator.stores.base import AppendItem
from migrator.stores.memory import MemoryServer
from tests.helpers import migrator, simple_message
from tests.unit.archive_helpers import archive_contents, backup, contents, flip_bit, marker_version, seeded_source

DATE = "14-Mar-2019 15:09:26 +0200"


def _rows(archive: Path) -> list[tuple]:
    with sqlite3.connect(archive / "index.sqlite") as db:
        return db.execute("SELECT f.name, m.uid, m.file, m.offset, m.length, m.start, m.sha256 FROM messages m "
                          "JOIN folders f ON f.id = m.folder_id ORDER BY f.name, m.uid").fetchall()


def _data_bytes(archive: Path) -> int:
    return sum(p.stat().st_size for p in (archive / "data").glob("*.zst"))


def test_a_message_in_several_folders_is_stored_once_and_restored_in_each(tmp_path):
    src = MemoryServer()
    shared = [simple_message(n, body=hashlib.sha256(b"%d" % n).hexdigest() * 400) for n in range(6)]
    for label in (("INBOX",), ("Label", "work"), ("Label", "2020"), ("[Gmail]", "All Mail")):
        for body in shared:
            src.deliver(label, body, ("\\Seen",), DATE)
    src.deliver(("INBOX",), simple_message(99, body="only here"), (), DATE)
    assert backup(src, tmp_path / "a", tmp_path / "s.sqlite").ok
    once = tmp_path / "once"
    _store(once, ("INBOX",), [*shared, simple_message(99, body="only here")])  # the same messages in one folder
    assert _data_bytes(tmp_path / "a") < _data_bytes(once) * 1.2  # not 4x
    places = {}
    for _name, _uid, file, offset, length, start, sha in _rows(tmp_path / "a"):
        places.setdefault(sha, set()).add((file, offset, length, start))
    assert len(places) == 7 and all(len(p) == 1 for p in places.values())
    assert archive_contents(tmp_path / "a") == contents(src.connect())
    res = migrator("archive", "check", str(tmp_path / "a"))
    assert res.code == 0 and "25 messages checked, 0 damaged" in res.out, res.text


def test_small_messages_share_a_frame_and_a_bit_flip_there_names_exactly_its_messages(tmp_path):
    src = MemoryServer()
    for n in range(1, 41):
        src.deliver(("INBOX",), simple_message(n, body=f"small message {n} " * 30), (), DATE)
    big = simple_message(41, body="".join(hashlib.sha256(b"%d" % i).hexdigest() for i in range(6000)))
    src.deliver(("INBOX",), big, (), DATE)  # over ALONE_OVER: a frame of its own
    assert backup(src, tmp_path / "a", tmp_path / "s.sqlite").ok
    rows = _rows(tmp_path / "a")
    frames = {(file, offset) for _n, _u, file, offset, *_ in rows}
    assert len(frames) == 2
    (big_frame,) = {(file, offset) for _n, uid, file, offset, *_ in rows if uid == 41}
    flip_bit(tmp_path / "a", ("INBOX",), 5)
    res = migrator("archive", "check", str(tmp_path / "a"))
    assert res.code == 1, res.text
    named = {int(u) for u in re.findall(r"DAMAGED INBOX UID (\d+): ", res.out)}
    assert named == set(range(1, 41))  # the whole frame, and only it: the big message is intact
    assert big_frame not in {(file, offset) for _n, uid, file, offset, *_ in rows if uid == 5}


def test_a_big_message_between_small_ones_does_not_cut_their_frame_in_two(tmp_path):
    """A group cut short compresses worse (zstd starts each frame cold): the big message gets a
    frame of its own, the small ones before and after it share one."""
    src = MemoryServer()
    for n in range(1, 42):
        body = "".join(hashlib.sha256(b"%d" % i).hexdigest() for i in range(6000)) if n == 21 else f"small {n} " * 30
        src.deliver(("INBOX",), simple_message(n, body=body), (), DATE)
    assert backup(src, tmp_path / "a", tmp_path / "s.sqlite").ok
    frames: dict[tuple[str, int], list[int]] = {}
    for _n, uid, file, offset, *_ in _rows(tmp_path / "a"):
        frames.setdefault((file, offset), []).append(uid)
    assert sorted(frames.values()) == [[*range(1, 21), *range(22, 42)], [21]]
    assert archive_contents(tmp_path / "a") == contents(src.connect())


def test_zstd_dc_splits_into_the_messages_by_their_separator_lines(tmp_path):
    src = seeded_source({("INBOX",): 7, ("Sent",): 5})
    src.deliver(("Sent",), simple_message(50, body="x" * 300_000), (), DATE)  # a frame of its own
    assert backup(src, tmp_path / "a", tmp_path / "s.sqlite").ok
    found = []
    for file in sorted((tmp_path / "a" / "data").glob("*.zst")):
        stream = subprocess.run(["zstd", "-dc", str(file)], capture_output=True, check=True).stdout
        pos = 0
        while pos < len(stream):  # what docs/archive-format.md says a person can do
            line = re.match(rb"migrator-archive-message (\d+) ([0-9a-f]{16})\n", stream[pos:])
            assert line, stream[pos:pos + 80]
            body = stream[pos + line.end():pos + line.end() + int(line[1])]
            assert fingerprint(body)[:16] == line[2].decode()  # `sha256sum | cut -c1-16`
            found.append(body)
            pos += line.end() + len(body)
    expected = [m.body for f in src.names() for m in _all(src, f)]
    assert sorted(found) == sorted(expected)


def _all(src: MemoryServer, folder):
    st = src.connect()
    st.select(folder)
    return list(st.fetch([m.uid for m in st.list_messages()]))


def _version_2_archive(path: Path, bodies: list[bytes]) -> None:
    """What migrator wrote before version 3: no `start` column, one frame per message, no separator."""
    (path / "data").mkdir(parents=True)
    (path / "archive.json").write_text(json.dumps({"format": "migrator-archive", "version": 2}))
    cctx, out, rows = zstandard.ZstdCompressor(level=3, write_checksum=True), b"", []
    for uid, body in enumerate(bodies, 1):
        frame = cctx.compress(body)
        rows.append((1, uid, "1-1-old-1.zst", len(out), len(frame), len(body), fingerprint(body), "[]", DATE))
        out += frame
    (path / "data" / "1-1-old-1.zst").write_bytes(out)
    cols = ("folder_id INTEGER, uid INTEGER, file TEXT, offset INTEGER, length INTEGER, size INTEGER, sha256 TEXT, "
            "flags TEXT, internaldate TEXT")
    with sqlite3.connect(path / "index.sqlite") as db:
        db.executescript(f"""
            CREATE TABLE folders (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, uidvalidity INTEGER NOT NULL,
                uidnext INTEGER NOT NULL, subscribed INTEGER NOT NULL DEFAULT 0, special_use TEXT);
            CREATE TABLE messages ({cols}, PRIMARY KEY (folder_id, uid));
            CREATE TABLE damaged ({cols}, reason TEXT NOT NULL, found REAL NOT NULL, PRIMARY KEY (folder_id, uid));
        """)
        db.execute("INSERT INTO folders VALUES (1, '[\"INBOX\"]', 7, ?, 0, NULL)", (len(bodies) + 1,))
        db.executemany("INSERT INTO messages VALUES (?,?,?,?,?,?,?,?,?)", rows)


def test_an_archive_of_version_2_is_read_as_it_is_and_upgraded_in_place_when_written(tmp_path):
    old = [simple_message(n, body=f"old message {n} " * 20) for n in range(1, 6)]
    _version_2_archive(tmp_path / "a", old)
    assert archive_contents(tmp_path / "a") == {("INBOX",): {(b, ()): 1 for b in old}}
    assert marker_version(tmp_path / "a") == 2  # read only: left as it was
    arc = ArchiveStore(str(tmp_path / "a"))
    try:
        new = b"Subject: new\r\n\r\nnew\r\n"
        uids = arc.append(("INBOX",), [AppendItem(old[0], (), DATE), AppendItem(new, (), DATE)])
    finally:
        arc.close()
    assert marker_version(tmp_path / "a") == ARCHIVE_VERSION and uids == [6, 7]
    rows = {uid: (file, start) for _n, uid, file, _o, _l, start, _s in _rows(tmp_path / "a")}
    assert rows[6] == rows[1] == ("1-1-old-1.zst", 0)  # deduplicated against a frame of version 2
    assert rows[7][1] > 0  # a new frame: after its separator line
    res = migrator("archive", "check", str(tmp_path / "a"))
    assert res.code == 0 and "7 messages checked, 0 damaged" in res.out, res.text


def test_a_message_whose_stored_copy_is_damaged_is_stored_again_not_pointed_at_it(tmp_path):
    bodies = [simple_message(n, body=f"message {n} " * 50) for n in range(1, 4)]
    _store(tmp_path / "a", ("INBOX",), bodies)
    flip_bit(tmp_path / "a", ("INBOX",), 2)
    _store(tmp_path / "a", ("Copy",), bodies)
    places = {(name, uid): (file, offset) for name, uid, file, offset, *_ in _rows(tmp_path / "a")}
    assert places['["Copy"]', 1] != places['["INBOX"]', 1]
    assert archive_contents(tmp_path / "a")[("Copy",)] == {(b, ()): 1 for b in bodies}


def _store(archive: Path, folder, bodies: list[bytes]) -> None:
    arc = ArchiveStore(str(archive))
    try:
        arc.create_folder(folder)
        arc.append(folder, [AppendItem(b, (), DATE) for b in bodies])
    finally:
        arc.close()
