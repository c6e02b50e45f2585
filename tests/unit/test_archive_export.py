"""`archive export` (issue 18): an archive written out as mbox, Maildir and .eml is read back by
Python's `mailbox` and matches the source by SHA-256 (mbox: after taking off what the export adds
and mboxrd unquoting, less the message's own Status, X-Status and X-Keywords fields, which the
export drops: docs/archive-format.md "Export"), with flags and dates where the format holds them.
The source: the shared real-world corpus, one folder per corpus source, plus messages made
to trip mbox (From lines, quoted From lines, no final newline). No server: the backup is the Engine
from a memory source, the export the CLI."""

from __future__ import annotations

import hashlib
import mailbox
import os
import re
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone

import pytest

from migrator.export.formats import folder_path
from migrator.imapdate import date_instant, format_date
from migrator.naming import Folder
from migrator.stores.memory import MemoryServer
from tests.helpers import migrator, simple_message
from tests.rig import corpus_messages
from tests.unit.archive_helpers import backup, flip_bit

FLAG_SETS = [(), ("\\Seen",), ("\\Answered", "\\Seen"), ("\\Flagged",), ("$Forwarded", "\\Seen"), ("\\Draft",),
             ("$Label1", "NonJunk", "\\Seen"), ("\\Answered", "\\Draft", "\\Flagged")]  # \\Deleted: not backed up
TRICKY = [
    b"From: a@example.org\nSubject: from lines\n\nFrom here on\n>From there\n>>From afar\nFrom\n",
    b"From: a@example.org\r\nSubject: no final newline\r\n\r\nthe end, without one",
    b"Subject: crlf and a From line\r\n\r\nFrom the start\r\n\r\nFrom again\r\n",
]


def _sha(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


@pytest.fixture(scope="module")
def archived(tmp_path_factory) -> tuple:
    """(archive dir, {folder: [(sha256, flags, INTERNALDATE instant)]}) of a backup of the corpus."""
    src, expected, base = MemoryServer(), {}, datetime(2015, 3, 1, 8, 30, tzinfo=timezone(timedelta(hours=2)))
    messages = [(path.split("/")[0], body) for path, body in corpus_messages()]
    messages += [("Tricky", body) for body in TRICKY]
    for n, (name, body) in enumerate(messages):
        folder: Folder = ("Sources", name) if name != "Tricky" else ("Tricky",)
        flags, date = FLAG_SETS[n % len(FLAG_SETS)], format_date(base + timedelta(hours=37 * n))
        src.deliver(folder, body, flags, date)
        expected.setdefault(folder, []).append((_sha(body), tuple(sorted(flags)), date_instant(date)))
    tmp = tmp_path_factory.mktemp("export")
    assert backup(src, tmp / "a", tmp / "state.sqlite").ok
    return tmp / "a", expected


def _export(archive, out, fmt: str, *extra: str):
    res = migrator("archive", "export", str(archive), str(out), f"--{fmt}", *extra)
    assert res.code == 0 and "Traceback" not in res.text, res.text
    return res


def mbox_message_bytes(raw: bytes) -> bytes:
    """What an mboxrd export entry (without its From_ line) gives back: the three lines the export
    put first dropped, then one '>' taken off each '>+From ' line."""
    head = re.match(rb"Status: [RO]+(\r?\n)X-Status: [AFTD]*\1X-Keywords: [^\n]*\n", raw)
    assert head, raw[:300]
    return re.sub(rb"^>(>*From )", rb"\1", raw[head.end():], flags=re.MULTILINE)


def test_mbox_export_is_read_by_pythons_mailbox_with_flags_and_dates(archived, tmp_path):
    archive, expected = archived
    _export(archive, tmp_path / "out", "mbox")
    for folder, want in expected.items():
        box = mailbox.mbox(tmp_path / "out" / (folder_path(folder) + ".mbox"), create=False)
        got = []
        for key in box.keys():
            msg = box.get_message(key)
            body = mbox_message_bytes(box.get_bytes(key))
            flags = set(msg.get_flags())
            when = datetime.strptime(msg.get_from().split(" ", 1)[1], "%a %b %d %H:%M:%S %Y")
            got.append((_sha(body), flags, when.replace(tzinfo=UTC).timestamp()))
        # A message without a final newline gets one; its own Status, X-Status, X-Keywords go.
        assert Counter((sha, date) for sha, _f, date in got) == Counter(
            (_sha(_ended(without_flag_fields(_body(sha)))), date) for sha, _f, date in want)
        assert [f for _s, f, _d in got] == [_mbox_flags(f) for _s, f, _d in want]


def test_maildir_export_is_byte_identical_with_flags_in_names_and_mtime_the_internaldate(archived, tmp_path):
    archive, expected = archived
    chosen = [("Sources", "cpython"), ("Sources", "spamassassin"), ("Tricky",)]  # the test's time: a few folders
    _export(archive, tmp_path / "out", "maildir", *[a for f in chosen for a in ("--folder", "/".join(f))])
    assert sorted(p.name for p in (tmp_path / "out" / "Sources").iterdir()) == ["cpython", "spamassassin"]
    for folder, want in [(f, expected[f]) for f in chosen]:
        box = mailbox.Maildir(tmp_path / "out" / folder_path(folder), factory=None, create=False)
        got = Counter()
        for key in box.keys():
            msg = box.get_message(key)
            got[(_sha(box.get_bytes(key)), msg.get_flags(), msg.get_date())] += 1
        assert got == Counter((sha, _maildir_flags(flags), date) for sha, flags, date in want), folder


def test_eml_export_is_byte_identical_with_mtime_the_internaldate(archived, tmp_path):
    archive, expected = archived
    _export(archive, tmp_path / "out", "eml", "--folder", "Tricky", "--folder", "Sources/cpython")
    written = sorted(p.relative_to(tmp_path / "out").parts[0] for p in (tmp_path / "out").iterdir())
    assert written == ["Sources", "Tricky"]
    for folder in (("Tricky",), ("Sources", "cpython")):
        files = sorted((tmp_path / "out" / folder_path(folder)).glob("*.eml"), key=lambda p: int(p.stem))
        assert [(_sha(p.read_bytes()), os.stat(p).st_mtime) for p in files] == [
            (sha, date) for sha, _f, date in expected[folder]]


def test_a_damaged_message_is_named_and_not_exported_the_rest_is(tmp_path):
    src = MemoryServer()
    for n in range(1, 5):
        src.deliver(("INBOX",), simple_message(n, body=f"message {n} " * 40))
    assert backup(src, tmp_path / "a", tmp_path / "s.sqlite", group_bytes=0).ok  # one message per frame
    flip_bit(tmp_path / "a", ("INBOX",), 2)
    res = migrator("archive", "export", str(tmp_path / "a"), str(tmp_path / "out"), "--maildir")
    assert res.code == 1 and "Traceback" not in res.text, res.text
    assert re.findall(r"DAMAGED (\S+) UID (\d+): ", res.text) == [("INBOX", "2")]
    names = os.listdir(tmp_path / "out" / "INBOX" / "cur")
    assert sorted(int(n.split(".M")[1].split(".")[0]) for n in names) == [1, 3, 4]


def test_export_refuses_a_directory_that_is_not_empty_and_two_formats(archived, tmp_path):
    archive, _ = archived
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    res = migrator("archive", "export", str(archive), str(tmp_path / "out"), "--mbox")
    assert res.code == 2 and "not an empty directory" in res.text and "Traceback" not in res.text
    res = migrator("archive", "export", str(archive), str(tmp_path / "new"), "--mbox", "--eml")
    assert res.code == 2 and "choose one format" in res.text
    assert os.listdir(tmp_path / "out") == ["keep.txt"] and not (tmp_path / "new").exists()


def test_folder_names_cannot_climb_out_or_collide():
    assert folder_path(("..", "a/b", ".hidden", "cur", "x.mbox")) == "%2E%2E/a%2Fb/%2Ehidden/%63ur/x%2Embox"


# -- expectations -------------------------------------------------------------------------------

_BODIES: dict[str, bytes] = {}


def _body(sha: str) -> bytes:
    if not _BODIES:
        _BODIES.update((_sha(body), body) for body in [b for _p, b in corpus_messages()] + TRICKY)
    return _BODIES[sha]


def _ended(body: bytes) -> bytes:
    return body if body.endswith(b"\n") else body + b"\n"


def without_flag_fields(message: bytes) -> bytes:
    """The message less what the mbox export drops: the Status, X-Status and X-Keywords fields of
    its header, which runs to the first line that is no field (name, colon), continuation or From line."""
    lines, kept, dropping = re.findall(rb"[^\n]*\n|[^\n]+$", message), [], False
    for n, line in enumerate(lines):
        continued = n > 0 and line[:1] in (b" ", b"\t")
        if not continued and not re.match(rb"[!-9;-~]+[ \t]*:|From ", line):
            return b"".join(kept + lines[n:])
        if not continued:  # a new field: its continuation lines go with it
            dropping = re.match(rb"(?i)(status|x-status|x-keywords)[ \t]*:", line) is not None
        if not dropping:
            kept.append(line)
    return b"".join(kept)


def _mbox_flags(flags: tuple[str, ...]) -> set[str]:
    """Python's mboxMessage.get_flags(): Status R/O, X-Status A/F/T/D."""
    letters = {"\\Seen": "R", "\\Answered": "A", "\\Flagged": "F", "\\Draft": "T", "\\Deleted": "D"}
    return {"O"} | {letters[f] for f in flags if f in letters}


def _maildir_flags(flags: tuple[str, ...]) -> str:
    letters = {"\\Draft": "D", "\\Flagged": "F", "$Forwarded": "P", "\\Answered": "R", "\\Seen": "S",
               "\\Deleted": "T"}
    return "".join(sorted(letters[f] for f in flags if f in letters))
