"""Archives: backup (IMAP -> zstd archive), verify, incremental rerun, restore (archive -> IMAP)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from tests import rig
from tests.helpers import dt, migrator, simple_message

pytestmark = pytest.mark.e2e


def _seed_mixed(account) -> None:
    # A spread of real-world messages (~170). Messages ending in a bare CR are left out: Dovecot
    # drops that CR on every APPEND (see test_migrate's corpus test for how that is reported).
    corpus = [m for m in rig.corpus_messages()[::7] if not m[1].endswith(b"\r")]
    flag_sets = [(), ("\\Seen",), ("\\Answered", "$Label1"), ("\\Flagged", "\\Seen")]
    rig.seed(account, ["INBOX"], [(raw, flag_sets[i % 4], dt(i)) for i, (_p, raw) in enumerate(corpus[:60])])
    rig.seed(account, ["Archive", "2020"], [(raw, flag_sets[i % 4], dt(i)) for i, (_p, raw) in enumerate(corpus[60:])])
    rig.seed(account, ["Dups"], [(simple_message(1), (), dt(1))] * 3)
    rig.create_folder(account, ["Empty"], subscribe=True)
    rig.seed(account, ["Sent"], [(simple_message(2), ("\\Seen",), dt(2))])  # special-use \Sent on this server


def test_backup_verify_restore_roundtrip(src_account, new_account, tmp_path):
    _seed_mixed(src_account)
    before = rig.snapshot(src_account)
    archive = tmp_path / "alice.archive"
    url = f"archive://{archive}"

    res = migrator("migrate", src_account.url, url, "--state", str(tmp_path / "b.sqlite"), "--report",
                   str(tmp_path / "b.json"), src=src_account)
    assert res.code == 0, res.text
    report = json.loads((tmp_path / "b.json").read_text())
    total = sum(len(v) for v in before.values())
    assert report["totals"]["copied"] == total

    # Private and compressed.
    assert stat.S_IMODE(os.stat(archive).st_mode) == 0o700
    data_files = list((archive / "data").iterdir())
    assert data_files and all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in data_files)
    assert sum(f.stat().st_size for f in data_files) < report["totals"]["copied_bytes"]

    from migrator.stores.archive import ArchiveStore

    arc = ArchiveStore(str(archive), create=False, readonly=True)
    try:
        special = {f.name: f.special_use for f in arc.list_folders()}
    finally:
        arc.close()
    assert special[("Sent",)] == "\\Sent"  # kept, so a restore can map it onto the new server's Sent

    ok = migrator("verify", src_account.url, url, src=src_account)
    assert ok.code == 0, ok.text

    # Incremental: only the new message goes in.
    rig.seed(src_account, ["INBOX"], [(simple_message(77), ("\\Seen",), dt(77))])
    res = migrator("migrate", src_account.url, url, "--state", str(tmp_path / "b.sqlite"), "--report",
                   str(tmp_path / "b2.json"), src=src_account)
    assert res.code == 0, res.text
    assert json.loads((tmp_path / "b2.json").read_text())["totals"]["copied"] == 1

    # A folder deleted on the source leaves the latest snapshot (a restore does not bring it back).
    client = rig.connect(src_account)
    try:
        client.delete_folder("Dups")
    finally:
        client.logout()
    res = migrator("migrate", src_account.url, url, "--state", str(tmp_path / "b.sqlite"), src=src_account)
    assert res.code == 0 and "kept in the archive's earlier snapshots: Dups (3 messages)." in res.out, res.text

    # Restore into a fresh account on the '.'+INBOX. server: everything back, byte for byte.
    target = new_account("dot")
    res = migrator("migrate", url, target.url, "--state", str(tmp_path / "r.sqlite"), dst=target)
    assert res.code == 0, res.text
    assert rig.snapshot(target) == rig.snapshot(src_account)
    assert ("Empty",) in rig.snapshot(target)


def test_archive_survives_a_torn_write(src_account, new_account, tmp_path):
    """Data first, index last: bytes written after the last commit are ignored, never misread."""
    rig.seed(src_account, ["INBOX"], [simple_message(i) for i in range(10)])
    archive = tmp_path / "a"
    res = migrator("migrate", src_account.url, f"archive://{archive}", "--state", str(tmp_path / "s.sqlite"),
                   src=src_account)
    assert res.code == 0
    data_file = next((archive / "data").iterdir())
    with open(data_file, "ab") as fh:
        fh.write(b"\x28\xb5\x2f\xfd garbage from a crashed writer")
    target = new_account("slash")
    res = migrator("migrate", f"archive://{archive}", target.url, "--state", str(tmp_path / "r.sqlite"), dst=target)
    assert res.code == 0, res.text
    assert rig.snapshot(target) == rig.snapshot(src_account)


def test_not_an_archive_is_a_clear_error(tmp_path, dst_account):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "file.txt").write_text("hello")
    res = migrator("migrate", f"archive://{tmp_path / 'junk'}", dst_account.url, dst=dst_account)
    assert res.code == 2, res.text
    assert "not a migrator archive" in res.err and "Traceback" not in res.text


def test_a_backup_keeps_the_nul_octets_a_dovecot_source_serves_as_0x80(src_account, tmp_path):
    """Dovecot serves a stored NUL as 0x80 in BODY[] (an IMAP literal cannot carry NUL), at the
    same size. A message that may hold one (a 0x80 after an ASCII octet) is read again as BINARY[]:
    where the two differ only there, the archive gets the stored bytes. UTF-8 text and a lone
    cp1252 euro sign (0x80, no NUL behind it) are kept as they are; a message whose BINARY[] also
    decodes other parts is copied as served, with a warning."""
    from migrator.stores.archive import ArchiveStore

    rig.seed(src_account, ["INBOX"], ["Subject: utf8 \u2014\r\nContent-Type: text/plain; charset=utf-8\r\n"
                                      "Content-Transfer-Encoding: 8bit\r\n\r\nem \u2014 \u201cq\u201d\r\n".encode()])
    stored = {
        "binary part": b"Subject: nul\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary"
                       b"\r\n\r\nab\x00cd\x00\x00\r\n",
        "header": b"Subject: nul in a header\x00x\r\n\r\nplain\r\n",
        "euro": b"Subject: cp1252\r\nContent-Type: text/plain; charset=windows-1252\r\n"
                b"Content-Transfer-Encoding: 8bit\r\n\r\n5 \x80 only\r\n",
        "mixed": b"Subject: mixed\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\n"
                 b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n\r\nx\x00y\r\n"
                 b"--B\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\naGVsbG8=\r\n--B--\r\n",
    }
    cur = Path(src_account.dovecot.mail_dir) / src_account.user / "cur"
    for i, body in enumerate(stored.values()):
        (cur / f"1700000000.nul{i}.test:2,").write_bytes(body)  # delivered as is, NUL included
    archive = tmp_path / "nul.archive"
    res = migrator("migrate", src_account.url, f"archive://{archive}", "--state", str(tmp_path / "b.sqlite"),
                   "--report", str(tmp_path / "b.json"), src=src_account)
    assert res.code == 0, res.text
    report = json.loads((tmp_path / "b.json").read_text())
    assert report["totals"]["copied"] == 5
    assert len(report["warnings"]) == 1 and "copied as served" in report["warnings"][0], report["warnings"]
    arc = ArchiveStore(str(archive), create=False, readonly=True)
    try:
        arc.select(("INBOX",))
        kept = {bytes(m.body) for m in arc.fetch([m.uid for m in arc.list_messages()])}
    finally:
        arc.close()
    for name in ("binary part", "header", "euro"):
        assert stored[name] in kept, name
    assert stored["mixed"].replace(b"\x00", b"\x80") in kept  # as served, and said so
    assert any("\u2014".encode() in body for body in kept)
    ok = migrator("verify", src_account.url, f"archive://{archive}", src=src_account)
    assert ok.code == 0, ok.text


def test_a_message_with_nul_octets_goes_as_a_binary_literal_and_its_conversion_is_reported(tmp_path, dst_account):
    """IMAP cannot carry NUL in an ordinary literal (RFC 3501 CHAR8): a body from an archive that
    holds one goes to a server with BINARY as a literal8 (RFC 3516). Dovecot stores such a message
    re-encoded (base64, so bigger): the size check reports it, with its reason, and exits 1.
    Bodies read from an IMAP source are not scanned for NUL (a literal cannot hold one); this is
    the path where the scan still runs. (Sent as an ordinary literal, Dovecot would store the NUL
    as is: the form on disk tells the two apart.) One worker: INBOX's size check goes out with
    the next folder's SELECT, and is reported all the same."""
    from migrator.stores.archive import ArchiveStore
    from migrator.stores.base import AppendItem

    nul_body = (b"Subject: binary part\r\nMessage-ID: <nul@test.example>\r\nContent-Type: application/octet-stream"
                b"\r\nContent-Transfer-Encoding: binary\r\n\r\nbefore\x00after\x00\x00end\r\n")
    plain = simple_message(1)
    archive = tmp_path / "nul.archive"
    arc = ArchiveStore(str(archive))
    try:
        arc.create_folder(("INBOX",))
        arc.select(("INBOX",), readonly=False)
        arc.append(("INBOX",), [AppendItem(nul_body, ("\\Seen",), "14-Mar-2019 15:09:26 +0200"),
                                AppendItem(plain, (), "15-Mar-2019 15:09:26 +0200")])
        arc.create_folder(("Later",))
        arc.select(("Later",), readonly=False)
        arc.append(("Later",), [AppendItem(simple_message(2), (), "16-Mar-2019 15:09:26 +0200")])
    finally:
        arc.close()
    res = migrator("migrate", f"archive://{archive}", dst_account.url, "--state", str(tmp_path / "r.sqlite"),
                   "--workers", "1", dst=dst_account)
    assert res.code == 1, res.text
    assert "INBOX UID 1: the destination server changed the message while storing it" in res.text
    assert "Messages copied: 2" in res.text
    stored = [p.read_bytes() for p in (Path(dst_account.dovecot.mail_dir) / dst_account.user / "cur").iterdir()]
    assert len(stored) == 2 and any(b"Content-Transfer-Encoding: base64" in b and b"\x00" not in b for b in stored)
