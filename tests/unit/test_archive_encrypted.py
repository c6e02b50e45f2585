"""Encryption at rest (issue 18): `--encrypt-to age1...` archives, read with `--identity FILE`.

A backup writes every frame age-encrypted and never needs the identity (a rerun, a rerun after
the state is lost, which adopts what the archive holds by the SHA-256s of its index); restore,
export and a full `archive check` read with it; `archive check` without it checks each frame's
ciphertext against its SHA-256. No server: the backups are the Engine from a memory source,
restore and the error lines the CLI, from one archive to another."""

from __future__ import annotations

import os
import shutil
import sqlite3
import sys
from pathlib import Path

import pytest
import zstandard

pyrage = pytest.importorskip("pyrage")

from migrator.errors import UsageError  # noqa: E402
from migrator.export.run import export_archive, open_archive  # noqa: E402
from migrator.stores.archive import ArchiveStore  # noqa: E402
from migrator.stores.archive_check import check_archive  # noqa: E402
from migrator.stores.archive_compact import compact  # noqa: E402
from migrator.stores.archive_crypt import parse_recipients  # noqa: E402
from migrator.stores.archive_list import list_folders_or_messages  # noqa: E402
from migrator.stores.archive_prune import prune  # noqa: E402
from migrator.stores.memory import MemoryServer  # noqa: E402
from tests.helpers import migrator, simple_message  # noqa: E402
from tests.unit.archive_helpers import backup, contents, flip_bit, row  # noqa: E402

INBOX, OLD = ("INBOX",), ("Archive", "2019")
CANARY = "ENCRYPTION-CANARY-7f3a plaintext line"
DATES = ["01-Feb-2019 10:00:00 +0100", "02-Mar-2019 11:30:00 -0500", "03-Apr-2020 23:59:59 +0000",
         "04-May-2021 00:00:01 +0200"]


def _keypair(path: Path) -> str:
    """An identity file as age-keygen writes it (0600); returns its recipient."""
    key = pyrage.x25519.Identity.generate()
    path.write_text(f"# created: 2026-12-03T10:00:00Z\n# public key: {key.to_public()}\n{key}\n")
    path.chmod(0o600)
    return str(key.to_public())


def _source() -> MemoryServer:
    """4 messages in INBOX (one with the canary line), and the canary message again in another
    folder (dedup), flags and dates of every kind."""
    src = MemoryServer()
    for n, date in enumerate(DATES, 1):
        body = simple_message(n, body=(CANARY if n == 1 else f"message {n} ") * 20)
        src.deliver(INBOX, body, [("\\Seen",), ("\\Flagged", "$Label1"), (), ("\\Answered", "\\Seen")][n - 1], date)
    src.deliver(OLD, src.contents(INBOX)[1][0], ("\\Seen",), DATES[0])
    return src


def _held(store) -> dict:
    """Folder -> sorted (bytes, flags, INTERNALDATE) of every message served intact."""
    out = {}
    try:
        for info in store.list_folders():
            store.select(info.name)
            msgs = store.fetch([m.uid for m in store.list_messages()])
            out[info.name] = sorted((m.body, m.meta.flags, m.meta.internaldate) for m in msgs if not m.damage)
    finally:
        store.close()
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(source, encrypted archive, state file, identity file, recipient, wrong identity file): one backup."""
    tmp = tmp_path_factory.mktemp("age")
    recipient = _keypair(tmp / "key.txt")
    _keypair(tmp / "other.txt")
    src = _source()
    stats = backup(src, tmp / "enc", tmp / "state.sqlite", encrypt_to=(recipient,))
    assert stats.ok and stats.total("copied") == 5
    return src, tmp / "enc", tmp / "state.sqlite", tmp / "key.txt", recipient, tmp / "other.txt"


def _own(tmp_path: Path, recipient: str, **opts) -> tuple[MemoryServer, Path, Path]:
    """(source, encrypted archive, state file) of a backup of its own, the test's to change."""
    src = _source()
    assert backup(src, tmp_path / "enc", tmp_path / "state.sqlite", encrypt_to=(recipient,), **opts).ok
    return src, tmp_path / "enc", tmp_path / "state.sqlite"


def test_data_files_hold_ciphertext_only_and_the_archive_only_the_public_key(built):
    src, enc, state, key, recipient, _other = built
    frames = [p.read_bytes() for p in (enc / "data").iterdir()]
    assert frames and all(f.startswith(b"age-encryption.org/v1\n") for f in frames)
    secret = key.read_text().splitlines()[-1].encode()
    for path in [*enc.rglob("*"), state]:
        if path.is_file():
            raw = path.read_bytes()
            assert CANARY.encode() not in raw and b"message 2" not in raw and secret not in raw, path
    assert recipient in (enc / "archive.json").read_text()
    # Dedup: the canary message of both folders is one entry of one frame.
    with sqlite3.connect(enc / "index.sqlite") as db:
        places = db.execute("SELECT file, offset, start, frame_sha256 FROM messages").fetchall()
    assert len(places) == 5 and len({p[:3] for p in places}) == 4 and all(p[3] for p in places)


def test_restore_with_the_identity_is_byte_identical_and_without_it_one_line_exit_2(built, tmp_path):
    src, enc, _state, key, _recipient, other = built
    target = tmp_path / "restored"
    args = ["migrate", f"archive://{enc}", f"archive://{target}", "--state", str(tmp_path / "r.sqlite")]
    res = migrator(*args, "--identity", str(key), "--report", str(tmp_path / "r.json"), "--debug")
    assert res.code == 0 and "Traceback" not in res.text, res.text
    secret = key.read_text().splitlines()[-1]
    written = [p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()]
    assert secret not in res.text and not any(secret.encode() in raw for raw in written)
    assert _held(ArchiveStore(str(target), create=False, readonly=True)) == _held(src.connect())
    same = migrator("verify", f"archive://{target}", f"archive://{enc}", "--identity", str(key))
    assert same.code == 0 and "Traceback" not in same.text, same.text

    missing = migrator(*args[:2], f"archive://{tmp_path / 'r2'}")
    assert missing.code == 2 and missing.err.count("\n") == 1 and "Traceback" not in missing.text, missing.text
    assert "is encrypted: reading it needs --identity FILE" in missing.err
    wrong = migrator(*args[:2], f"archive://{tmp_path / 'r3'}", "--identity", str(other))
    assert wrong.code == 2 and wrong.err.count("\n") == 1, wrong.text
    assert "none of its keys is a recipient of this archive" in wrong.err
    assert not (tmp_path / "r2").exists() and not (tmp_path / "r3").exists()  # refused before anything was written


def test_encrypt_to_errors_are_one_line_exit_2(built, tmp_path):
    src, enc, _state, key, recipient, _other = built
    plain = tmp_path / "plain"
    shutil.copytree(enc, tmp_path / "enc2")
    other = _keypair(tmp_path / "third.txt")
    res = migrator("migrate", f"archive://{enc}", f"archive://{tmp_path / 'enc2'}", "--identity", str(key),
                   "--encrypt-to", other, "--state", str(tmp_path / "s.sqlite"))
    assert res.code == 2 and "is encrypted to other recipients" in res.err and res.err.count("\n") == 1, res.text
    bad = migrator("migrate", f"archive://{enc}", f"archive://{plain}", "--encrypt-to", "age1nope")
    assert bad.code == 2 and "is not an age recipient" in bad.err and not plain.exists(), bad.text
    # Into a new archive encrypted to another key (--identity reads the source only), as a dry run.
    dry = migrator("migrate", f"archive://{enc}", f"archive://{tmp_path / 'enc3'}", "--identity", str(key),
                   "--encrypt-to", other, "--dry-run", "--state", str(tmp_path / "d.sqlite"))
    assert dry.code == 0 and "Would copy 5 messages" in dry.out, dry.text


def test_a_plain_archive_refuses_encrypt_to_and_pyrage_missing_is_one_line(tmp_path, monkeypatch):
    recipient = _keypair(tmp_path / "key.txt")
    store = ArchiveStore(str(tmp_path / "plain"))
    store.close()
    with pytest.raises(UsageError, match="is not encrypted, and an archive is encrypted"):
        ArchiveStore(str(tmp_path / "plain"), encrypt_to=(recipient,))
    monkeypatch.setitem(sys.modules, "pyrage", None)  # as if not installed
    with pytest.raises(UsageError) as e:
        parse_recipients([recipient])
    assert "pyrage" in str(e.value) and e.value.hint == "pip install 'migrator[encrypt]'"


def test_backups_need_no_identity_also_after_the_state_is_lost(built, tmp_path):
    key, recipient = built[3], built[4]
    src, enc, state = _own(tmp_path, recipient)
    src.deliver(INBOX, simple_message(9, body=CANARY), ("\\Seen",), DATES[1])  # new
    src.deliver(OLD, src.contents(INBOX)[2][0], (), DATES[1])  # bytes the archive holds: dedup
    src.change_flags(INBOX, 3, ("\\Seen", "$Done"))
    stats = backup(src, enc, state)  # no identity, no --encrypt-to: the stored recipients
    assert stats.ok and stats.total("copied") == 2 and stats.total("flags_updated") == 1
    os.unlink(state)  # lost: every message is found again by its SHA-256 in the index, unread
    again = backup(src, enc, state)
    assert again.ok and again.total("copied") == 0, again
    reader = ArchiveStore(str(enc), create=False, readonly=True, identity=str(key))
    assert _held(reader) == _held(src.connect())
    assert check_archive(str(enc), identity=str(key)).clean


def test_check_without_identity_checks_frames_and_names_a_bit_flip_as_with_it(built, tmp_path):
    key, recipient = built[3], built[4]
    _src, enc, _state = _own(tmp_path, recipient, group_bytes=0)  # one message per frame: one damaged
    good = check_archive(str(enc))
    assert good.clean and good.sealed_only and good.messages == 5
    flip_bit(enc, INBOX, 2)
    blind, full = check_archive(str(enc)), check_archive(str(enc), identity=str(key))
    assert [(d.folder, d.uid) for d in blind.damaged] == [("INBOX", 2)], blind.damaged
    assert "frame SHA-256" in blind.damaged[0].reason
    assert [(d.folder, d.uid) for d in full.damaged] == [("INBOX", 2)] and not full.sealed_only
    res = migrator("archive", "check", str(enc), "--repair")
    assert res.code == 1 and "DAMAGED INBOX UID 2" in res.out and "1 moved aside" in res.out, res.text
    assert "contents were not checked" in res.out
    assert check_archive(str(enc), identity=str(key)).clean


def test_verify_without_the_identity_compares_the_sha256s_the_index_keeps(built, tmp_path):
    """A backup host without the key can still verify: by the SHA-256s in the index, each frame
    checked as stored. A bit flip is named as damage, and a missing message as missing."""
    key, recipient = built[3], built[4]
    _src, enc, _state = _own(tmp_path, recipient, group_bytes=0)
    plain = tmp_path / "plain"
    restored = migrator("migrate", f"archive://{enc}", f"archive://{plain}", "--identity", str(key),
                        "--state", str(tmp_path / "r.sqlite"), "--quiet")
    assert restored.code == 0, restored.text
    same = migrator("verify", f"archive://{plain}", f"archive://{enc}")
    assert same.code == 0 and "Identical." in same.out, same.text
    flip_bit(enc, INBOX, 2)
    res = migrator("verify", f"archive://{plain}", f"archive://{enc}")
    assert res.code == 1 and "Traceback" not in res.text, res.text
    assert "damaged on the destination: UID 2:" in res.out and "frame as stored" in res.out, res.out
    assert "missing" in res.out  # the source's copy of UID 2 has no intact twin left


def test_export_reads_with_the_identity(built, tmp_path):
    src, enc, _state, key, _recipient, _other = built
    result = export_archive(str(enc), "eml", str(tmp_path / "out"), open_source=lambda d: open_archive(d, None,
                                                                                                       str(key)))
    assert result.messages == 5 and not result.damaged
    exported = sorted(p.read_bytes() for p in (tmp_path / "out").rglob("*.eml"))
    assert exported == sorted(body for folder in src.names() for body, _f, _d in src.contents(folder).values())
    with pytest.raises(UsageError, match="needs --identity"):
        open_archive(str(enc))
    listed = list_folders_or_messages(str(enc), "INBOX", None)  # the index only: no identity needed
    assert sum(1 for line in listed if "\\Seen" in line) == 2, listed


def test_prune_and_compact_work_without_identity_and_regroup_with_it(built, tmp_path):
    key, recipient = built[3], built[4]
    src, enc, state = _own(tmp_path, recipient)
    store = src.connect()
    store.select(INBOX, readonly=False)
    store.expunge_uids([2, 4])
    store.close()
    assert backup(src, enc, state, mirror=True).ok  # a second snapshot, without them
    assert prune(str(enc), {"last": 1}, dry_run=False).messages_dropped == 2
    blind = compact(str(enc))
    assert blind.unopened and blind.bytes_after == blind.bytes_before  # grouped frames copied whole
    assert check_archive(str(enc)).clean
    assert b"message 2 " in _referenced_plaintext(enc, key)  # ... the pruned messages with them
    opened = compact(str(enc), identity=str(key))
    # Regrouped: the pruned messages' bytes are gone. (Not asserted: a smaller file. Two messages of
    # four, this alike, compress to about as much, and the new frame's size varies by some bytes.)
    held = _referenced_plaintext(enc, key)
    assert opened.files_rewritten and b"message 2 " not in held and b"message 4 " not in held
    assert b"message 3 " in held and CANARY.encode() in held
    assert check_archive(str(enc)).clean and check_archive(str(enc), identity=str(key)).clean
    reader = ArchiveStore(str(enc), create=False, readonly=True, identity=str(key))
    assert _held(reader) == _held(src.connect())


def _referenced_plaintext(enc: Path, key: Path) -> bytes:
    """Every frame an index row points at, decrypted and decoded (pyrage and zstandard only)."""
    identity = pyrage.x25519.Identity.from_str(key.read_text().splitlines()[-1])
    db = sqlite3.connect(enc / "index.sqlite")
    try:
        places = db.execute("SELECT DISTINCT file, offset, length FROM messages ORDER BY file, offset").fetchall()
    finally:
        db.close()
    out = b""
    for file, offset, length in places:
        with open(enc / "data" / file, "rb") as fh:
            fh.seek(offset)
            out += zstandard.ZstdDecompressor().decompress(pyrage.decrypt(fh.read(length), [identity]))
    return out


def test_an_identity_file_others_can_read_is_warned_about(built, tmp_path, capsys):
    _src, enc, _state, key, _recipient, _other = built
    loose = tmp_path / "loose.txt"
    shutil.copy(key, loose)
    loose.chmod(0o644)
    assert contents(ArchiveStore(str(enc), create=False, readonly=True, identity=str(loose)))
    assert f"--identity {loose} is readable by group or others" in capsys.readouterr().err
    assert row(enc, INBOX, 1)  # the archive is untouched
