"""Archives for the integrity tests: built by a real backup (the Engine from a memory source),
read back through the Store contract, and damaged the ways disks damage them."""

from __future__ import annotations

import json
import os
import sqlite3
from collections import Counter
from pathlib import Path

from migrator.accounts import parse_endpoint
from migrator.checkpoint import Checkpoint
from migrator.engine.copy import Engine, EngineOptions
from migrator.naming import Folder, folder_key
from migrator.plan import FolderPlan, Plan
from migrator.stats import Stats
from migrator.stores.archive import ArchiveStore
from migrator.stores.base import Store
from migrator.stores.memory import MemoryServer
from tests.helpers import simple_message

FAST = {"workers": 1, "backoff_base": 0.001, "backoff_max": 0.01, "in_flight_grace": 0.0, "stop_grace": 2.0}


def seeded_source(folders: dict[Folder, int]) -> MemoryServer:
    """A source with this many distinct messages per folder (every third \\Seen)."""
    server, n = MemoryServer(), 0
    for folder, count in folders.items():
        server.create(folder)
        for _ in range(count):
            n += 1
            server.deliver(folder, simple_message(n, body=f"message {n} " * 40), ("\\Seen",) if n % 3 else ())
    return server


def backup(src: MemoryServer, archive: Path, state: Path, group_bytes: int | None = None, mirror: bool = False,
           include_deleted: bool = False, **store) -> Stats:
    """migrate SRC archive://ARCHIVE with a state file, as a backup run does (one worker: each
    folder's messages go to one data file, in UID order). group_bytes=0: one message per frame, so
    that damage done to one frame damages one message (the default groups small ones). store: more
    ArchiveStore options (encrypt_to); mirror: mail gone from the source leaves the latest snapshot,
    as the runner's runs into an archive do; include_deleted: messages flagged \\Deleted are backed
    up too (--include-deleted)."""
    opts = store if group_bytes is None else {"group_bytes": group_bytes, **store}
    plan = Plan(parse_endpoint("imap://a@src.example"), parse_endpoint(f"archive://{archive}"),
                [FolderPlan(f, f) for f in src.names()])
    ckpt = Checkpoint(str(state))
    try:
        ckpt.bind("a@src.example", str(archive))
        options = EngineOptions(**FAST, delete_extra=mirror, include_deleted=include_deleted)
        return Engine(plan, src.connect, lambda: ArchiveStore(str(archive), **opts), ckpt, options, Stats()).run()
    finally:
        ckpt.close()


def contents(store: Store) -> dict[Folder, Counter]:
    """Folder -> multiset of (bytes, flags) of every message the store serves intact."""
    out: dict[Folder, Counter] = {}
    try:
        for info in store.list_folders():
            store.select(info.name)
            uids = [m.uid for m in store.list_messages()]
            out[info.name] = Counter((m.body, m.meta.flags) for m in store.fetch(uids) if not m.damage)
    finally:
        store.close()
    return out


def archive_contents(path: Path) -> dict[Folder, Counter]:
    return contents(ArchiveStore(str(path), create=False, readonly=True))


def row(archive: Path, folder: Folder, uid: int) -> tuple[str, int, int]:
    """(data file, offset, length) of a message's frame."""
    with sqlite3.connect(archive / "index.sqlite") as db:
        return db.execute("SELECT file, offset, length FROM messages m JOIN folders f ON f.id = m.folder_id "
                          "WHERE f.name=? AND m.uid=?", (folder_key(folder), uid)).fetchone()


def flip_bit(archive: Path, folder: Folder, uid: int) -> None:
    file, offset, length = row(archive, folder, uid)
    with open(archive / "data" / file, "r+b") as fh:
        fh.seek(offset + length // 2)
        byte = fh.read(1)[0]
        fh.seek(offset + length // 2)
        fh.write(bytes([byte ^ 0x10]))


def overwrite_frame(archive: Path, folder: Folder, uid: int) -> None:
    """Garbage where the frame was: not a zstd frame any more."""
    file, offset, length = row(archive, folder, uid)
    with open(archive / "data" / file, "r+b") as fh:
        fh.seek(offset)
        fh.write(b"x" * length)


def wrong_hash(archive: Path, folder: Folder, uid: int) -> None:
    """The frame intact, the index's SHA-256 another one: the bytes are not what was stored."""
    with sqlite3.connect(archive / "index.sqlite") as db:
        db.execute("UPDATE messages SET sha256=? WHERE uid=? AND folder_id=(SELECT id FROM folders WHERE name=?)",
                   ("0" * 64, uid, folder_key(folder)))


def cut_within(archive: Path, folder: Folder, uid: int) -> None:
    """The data file truncated in the middle of this message's frame."""
    file, offset, length = row(archive, folder, uid)
    os.truncate(archive / "data" / file, offset + length // 2)


def remove_file_of(archive: Path, folder: Folder, uid: int) -> None:
    os.unlink(archive / "data" / row(archive, folder, uid)[0])


def marker_version(archive: Path) -> int:
    return json.loads((archive / "archive.json").read_text())["version"]
