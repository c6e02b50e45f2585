"""Gmail as a destination (issue 16), against tests/gmail_standin.py: a STAND-IN for Gmail
(hoodiecrow-imap with its X-GM-EXT-1 plugin; Gmail cannot be reached from here) that keeps one copy
of a message per account and drops an APPEND of bytes it holds already, as Gmail does. Dovecot is
the source. The stand-in logs every command, so the test counts the uploads (APPENDs)."""

from __future__ import annotations

import pytest

from migrator.engine.within import DUPLICATE_IN_FOLDER
from tests.gmail_standin import GmailStandIn
from tests.helpers import migrate, migrator

pytestmark = pytest.mark.e2e

SHARED = b"Subject: in three folders\r\nMessage-ID: <shared@example.com>\r\n\r\nthe same bytes three times\r\n"
ALONE = b"Subject: only in Work\r\n\r\none folder\r\n"
TWIN = b"Subject: twice in Family\r\n\r\ntwo identical copies in one folder\r\n"


def _seed(account) -> None:
    """A Dovecot account as another tool's migration leaves it: one message in three folders, and
    two identical messages in one folder."""
    with account.connect() as c:
        for folder in ("Work", "Family"):
            c.create_folder(folder)
        c.append("INBOX", SHARED)
        c.append("Work", SHARED)
        c.append("Work", ALONE)
        c.append("Family", SHARED)
        c.append("Family", TWIN)
        c.append("Family", TWIN)


def _held(gmail: GmailStandIn) -> dict[str, list[tuple[str, tuple[str, ...]]]]:
    """folder -> sorted [(Subject, X-GM-MSGID)] the stand-in shows."""
    from tests.gmail_standin import _client
    out = {}
    with _client(gmail) as c:
        for folder in ("INBOX", "Work", "Family"):
            c.select_folder(folder, readonly=True)
            got = c.fetch(c.search(), ["BODY.PEEK[HEADER.FIELDS (SUBJECT)]", "X-GM-MSGID"])
            out[folder] = sorted((d[b"BODY[HEADER.FIELDS (SUBJECT)]"].decode().strip()[9:], str(d[b"X-GM-MSGID"]))
                                 for d in got.values())
    return out


def _appends(gmail: GmailStandIn, body: bytes | None = None) -> int:
    """APPENDs the stand-in received (of `body` only: told by its literal's size)."""
    size = "" if body is None else f"{{{len(body)}+}}"
    return sum(1 for line in gmail.commands() if line.split()[1:2] == ["APPEND"] and line.endswith(size))


def test_gmail_destination_uploads_each_message_once_and_labels_it(new_account, tmp_path):
    src = new_account()
    _seed(src)
    with GmailStandIn([]) as gmail:
        res, report = migrate(src, gmail, tmp_path, "--workers", "2")
        assert res.code == 0, res.text
        held = _held(gmail)
        shared = [m for folder in held.values() for m in folder if m[0] == "in three folders"]
        assert len(shared) == 3 and len({msgid for _, msgid in shared}) == 1  # one message, 3 labels
        assert [s for s, _ in held["Family"]] == ["in three folders", "twice in Family"]  # Gmail holds one
        assert [s for s, _ in held["Work"]] == ["in three folders", "only in Work"]
        # uploaded once, then labelled; the twins came in one batch: Gmail dropped the second APPEND
        assert _appends(gmail, SHARED) == 1 and _appends(gmail) == 4
        assert sum("+X-GM-LABELS" in line for line in gmail.commands()) == 2
        assert sum(line.startswith("* DROPPED") for line in gmail.commands()) == 1
        totals = report["totals"]
        assert totals["copied"] == 5 and totals["copied_within_destination"] == 2, totals
        assert totals["skipped"] == {DUPLICATE_IN_FOLDER: 1}, totals

        appends = _appends(gmail)
        res, report = migrate(src, gmail, tmp_path, report="rerun.json")
        assert res.code == 0 and report["totals"]["copied"] == 0, res.text
        assert _appends(gmail) == appends  # a rerun uploads nothing
        assert _held(gmail) == held

        with src.connect() as c:  # one more twin, in a later run: known by its SHA-256, never sent
            c.append("Family", TWIN)
        res, report = migrate(src, gmail, tmp_path, report="twin.json")
        assert res.code == 0 and report["totals"]["copied"] == 0, res.text
        assert report["totals"]["skipped"] == {DUPLICATE_IN_FOLDER: 1}
        assert _appends(gmail) == appends and _held(gmail) == held

        res = migrator("verify", src.url, gmail.url, src=src, dst=gmail)  # the twins held once: no difference
        assert res.code == 0 and "2 exact duplicate(s) in the source folder, held once" in res.out, res.text
