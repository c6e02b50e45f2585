"""`archive export` (issue 18) read by the real mutt: every message of an exported mbox and of an
exported Maildir tree, as mutt splits and hands it out (tests/mutt.py), against the source by
SHA-256, and the flags mutt read, as the maildir letters of its copies.

The source: the shared real-world corpus (one folder per corpus source) plus messages made to
trip an mbox reader (From lines, quoted From lines, no final newline, CRLF, an mbox From line in
the header, no empty line after the header, stale flags of its own), flags cycling through
\\Seen, \\Answered, \\Flagged, \\Deleted (backed up as --include-deleted does), \\Draft, $Forwarded
and a keyword. A real backup (the Engine from a memory source), the export by the CLI.

What mutt hands out is not always the archived bytes, and mutt_view() says exactly how
(docs/archive-format.md, "Export", "Read by mutt"): mbox adds its From_ line and three flag
lines, drops the message's own (without_flag_fields()) and quotes From lines (mboxrd; mutt
reads mbox as mboxo and does not unquote), and mutt,
whatever the format, writes the line that ends a header as a bare LF of its own.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest

from migrator.export.formats import folder_path
from migrator.imapdate import date_instant, format_date
from migrator.naming import Folder
from migrator.stores.memory import MemoryServer
from tests.helpers import migrator
from tests.mutt import mutt_binary, read_with_mutt
from tests.rig import corpus_messages
from tests.unit.archive_helpers import backup
from tests.unit.test_archive_export import _ended, _sha, without_flag_fields

pytestmark = pytest.mark.xdist_group("export-mutt")  # one worker builds the export, once

FLAG_SETS = [(), ("\\Seen",), ("\\Answered", "\\Seen"), ("\\Flagged",), ("\\Deleted", "\\Seen"),
             ("$Forwarded", "\\Seen"), ("\\Draft",), ("$Label1", "\\Answered", "\\Deleted", "\\Draft", "\\Flagged")]
CRAFTED = [
    b"From: a@example.org\nSubject: from lines\n\nFrom here on\n>From there\n>>From afar\nFrom\n",
    b"From: a@example.org\r\nSubject: no final newline\r\n\r\nthe end, without one",
    b"Subject: crlf and a From line\r\n\r\nFrom the start\r\n\r\nFrom again\r\n",
    b"From someone@example.org Mon Jan  1 00:00:00 2001\nSubject: an mbox From line first\n\nbody\n",
    b"Subject: a header and no empty line after it\nX-Other: yes\n",
    b"Subject: ends with empty lines\n\nbody\n\n\n",
    # Its own flags, from an mbox it came through (it is \\Draft only: FLAG_SETS[6]).
    b"Status: RO\r\nX-Status: AD\r\nX-Keywords: old\r\n  folded\r\nSubject: stale flags\r\n\r\nStatus: RO\r\n",
    b"Subject: no final newline, a From line last\n\nFrom the end",
]
_LETTERS = {"\\Draft": "D", "\\Flagged": "F", "$Forwarded": "P", "\\Answered": "R", "\\Seen": "S", "\\Deleted": "T"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple:
    """(OUT of the mbox export, OUT of the maildir export, {folder: [(bytes, flags, INTERNALDATE)]})."""
    mutt_binary()  # skipped (or failed, in CI) before any work when there is no mutt
    src, expected = MemoryServer(), {}
    base = datetime(2016, 2, 29, 23, 30, tzinfo=timezone(timedelta(hours=-5)))
    messages = [(path.split("/")[0], body) for path, body in corpus_messages()] + [("Crafted", b) for b in CRAFTED]
    for n, (name, body) in enumerate(messages):
        folder: Folder = ("Crafted",) if name == "Crafted" else ("Sources", name)
        flags = FLAG_SETS[len(expected.get(folder, ())) % len(FLAG_SETS)]  # the Nth of a folder: FLAG_SETS[N % 8]
        date = format_date(base + timedelta(hours=53 * n))
        src.deliver(folder, body, flags, date)
        expected.setdefault(folder, []).append((body, flags, date_instant(date)))
    tmp = tmp_path_factory.mktemp("mutt")
    assert backup(src, tmp / "a", tmp / "state.sqlite", include_deleted=True).ok
    for fmt in ("mbox", "maildir"):
        res = migrator("archive", "export", str(tmp / "a"), str(tmp / fmt), f"--{fmt}")
        assert res.code == 0 and "Traceback" not in res.text, res.text
    return tmp / "mbox", tmp / "maildir", expected


def test_mutt_reads_every_message_of_an_mbox_export_with_its_bytes_date_and_flags(exported, tmp_path):
    out, _maildir, expected = exported
    folders = sorted(expected)
    views = read_with_mutt([out / (folder_path(f) + ".mbox") for f in folders], tmp_path / "mutt", ("~D",))
    for folder, view in zip(folders, views, strict=True):
        want = expected[folder]
        assert len(view.messages) == len(want), folder  # none split in two, none merged with the next
        for seen, (body, flags, when) in zip(view.messages, want, strict=True):
            from_line, rest = seen.split(b"\n", 1)
            assert from_line == b"From MAILER-DAEMON " + time.asctime(time.gmtime(when)).encode()
            mine = _ended(without_flag_fields(body))  # as the export writes it (docs/archive-format.md)
            assert _sha(rest) == _sha(mutt_view(_flag_lines(mine, flags) + mboxrd_quote(mine))), (folder, body[:200])
        # mutt reads Status (S) and X-Status A (R), F and D (deleted: its copies never carry it, so
        # ~D); not the X-Status T of \Draft, nor X-Keywords.
        assert view.flags == [_letters(flags, "FRS") for _b, flags, _w in want], folder
        deleted = [seen for seen, (_b, flags, _w) in zip(view.messages, want, strict=True) if "\\Deleted" in flags]
        assert view.matching["~D"] == deleted, folder


def test_mutt_reads_every_message_of_a_maildir_export_with_its_bytes_and_flags(exported, tmp_path):
    _mbox, out, expected = exported
    folders = sorted(expected)
    views = read_with_mutt([out / folder_path(f) for f in folders], tmp_path / "mutt", ("~D",))
    for folder, view in zip(folders, views, strict=True):
        # A maildir is a set of files, read in an order of mutt's own: compare multisets.
        want = expected[folder]
        assert Counter(zip(map(_sha, view.messages), view.flags, strict=True)) == Counter(
            (_sha(mutt_view(body)), _letters(flags, "DFPRS")) for body, flags, _w in want), folder
        # mutt reads the flags from the name, but marks a message deleted also when its own header has
        # an X-Status with a D (the crafted one: Maildir keeps the bytes exactly, so mutt shows it deleted).
        assert Counter(map(_sha, view.matching["~D"])) == Counter(
            _sha(mutt_view(body)) for body, flags, _w in want if "\\Deleted" in flags or _x_status_d(body)), folder


def test_mutt_shows_from_lines_quoted_once_more_and_crlf_kept(exported, tmp_path):
    """What a user sees in mutt, spelled out on the crafted messages (mutt_view() in general)."""
    out, _maildir, _expected = exported
    [view] = read_with_mutt([out / "Crafted.mbox"], tmp_path / "mutt", ("~D",))
    assert view.messages[0].endswith(b"\n\n>From here on\n>>From there\n>>>From afar\nFrom\n")
    assert view.messages[1].endswith(b"\r\nSubject: no final newline\r\n\nthe end, without one\n")
    assert view.messages[2].endswith(b"\r\n\n>From the start\r\n\r\n>From again\r\n")
    assert b"\n>From someone@example.org Mon Jan  1 00:00:00 2001\nSubject: an mbox" in view.messages[3]
    assert view.messages[4].endswith(b"\nX-Other: yes\n\n")
    assert view.messages[5].endswith(b"\n\nbody\n\n\n")
    # Its own Status and X-Status dropped: mutt would add them up with the archive's flags.
    assert view.messages[6].split(b"\n", 1)[1] == (
        b"Status: O\r\nX-Status: T\r\nX-Keywords: \r\nSubject: stale flags\r\n\nStatus: RO\r\n")
    assert view.flags[6] == "" and view.messages[6] not in view.matching["~D"]


# -- what mutt hands out ------------------------------------------------------------------------

def mutt_view(message: bytes) -> bytes:
    """A message as mutt pipes it (pipe_decode=no), whatever the mailbox format: its header lines
    as they are, then a bare LF for the line that ended the header, then its body as it is.

    mutt's header ends at the first line that starts with a space, tab, CR, LF, VT or FF and is not
    a continuation (the empty line, "\\n" or "\\r\\n": replaced by "\\n"; any other: kept, "\\n" after
    it), or at the first line that is no field (no ':' before a space or tab; not consumed: "\\n"
    inserted before it), an mbox From_ line (with its date) and ">From " lines (a bogus MTA's
    quoted one) excepted: mutt skips them. mutt looks at a line with its trailing white space
    taken off and its continuation lines joined with a space (">From \\r\\n" is no ">From " line)."""
    lines, pos = re.findall(rb"[^\n]*\n|[^\n]+$", message), 0
    for n, line in enumerate(lines):
        if not line.endswith(b"\n"):
            break  # a last line without a newline: mutt reads it into the header
        if n and line[:1] in (b" ", b"\t"):
            pass  # a continuation line
        elif line[:1] in (b" ", b"\t", b"\r", b"\n", b"\x0b", b"\x0c"):
            end = pos if line in (b"\n", b"\r\n") else pos + len(line)
            return message[:end] + b"\n" + message[pos + len(line):]
        else:
            continued = n + 1 < len(lines) and lines[n + 1][:1] in (b" ", b"\t")
            if not re.match(rb"[^: \t]*:|>From |" + _FROM_, line.rstrip(b" \t\r\n\x0b\x0c") + b" " * continued):
                return message[:pos] + b"\n" + message[pos:]
        pos += len(line)
    return message + b"\n"  # no line ended the header: it ends with the message


# mutt's is_from(), near enough for the corpus: "From ", maybe an address, a ctime date.
_FROM_ = rb"From (?:\S+ +)?(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) +[A-Z][a-z]+ +\d+ +\d+:\d+"


def mboxrd_quote(message: bytes) -> bytes:
    return re.sub(rb"(?m)^(>*From )", rb">\1", message)


def _flag_lines(body: bytes, flags) -> bytes:
    eol = b"\r\n" if body.split(b"\n", 1)[0].endswith(b"\r") else b"\n"
    x_status = "".join(letter for flag, letter in (("\\Answered", "A"), ("\\Flagged", "F"), ("\\Draft", "T"),
                                                    ("\\Deleted", "D")) if flag in flags)
    keywords = " ".join(f for f in flags if not f.startswith("\\"))
    return eol.join([b"Status: RO" if "\\Seen" in flags else b"Status: O", f"X-Status: {x_status}".encode(),
                     f"X-Keywords: {keywords}".encode()]) + eol


def _x_status_d(message: bytes) -> bool:
    header = re.split(rb"\r?\n\r?\n", message, maxsplit=1)[0]
    return re.search(rb"(?im)^X-Status:[^\n]*D", header) is not None


def _letters(flags, kept: str) -> str:
    return "".join(sorted(_LETTERS[f] for f in flags if f in _LETTERS and _LETTERS[f] in kept))
