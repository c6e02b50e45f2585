"""Gmail as a source (issue 16), against tests/gmail_standin.py: a STAND-IN for Gmail (hoodiecrow-imap,
a third-party IMAP test server, with its X-GM-EXT-1 plugin; Gmail cannot be reached from here). The
stand-in logs every command, so the test counts the bodies migrator downloads."""

from __future__ import annotations

import pytest

from tests.gmail_standin import GmailMessage, GmailStandIn
from tests.helpers import migrate

pytestmark = pytest.mark.e2e


def _account():
    return [GmailMessage(b"Subject: three labels\r\n\r\nin INBOX, Work and Family\r\n", ("\\Inbox", "Work", "Family")),
            GmailMessage(b"Subject: archived\r\n\r\nonly in All Mail\r\n", ()),
            GmailMessage(b"Subject: starred\r\n\r\nstarred and important\r\n", ("\\Starred", "\\Important", "Work")),
            GmailMessage(b"Subject: later labelled\r\n\r\nFamily comes on the rerun\r\n", ("Work",))]


def _subjects(account) -> dict[tuple, list[tuple[str, tuple]]]:
    """folder -> [(Subject, flags)] of what the destination holds."""
    out = {}
    with account.connect() as c:
        for folder in [f for _flags, _sep, f in c.list_folders()]:
            c.select_folder(folder, readonly=True)
            uids = c.search()
            got = c.fetch(uids, ["BODY.PEEK[HEADER.FIELDS (SUBJECT)]", "FLAGS"]) if uids else {}
            out[folder] = sorted((d[b"BODY[HEADER.FIELDS (SUBJECT)]"].decode().strip()[9:],
                                  tuple(sorted(f.decode() for f in d[b"FLAGS"] if f != b"\\Recent")))
                                 for d in got.values())
    return out


def test_gmail_source_downloads_each_message_once_and_files_it_under_every_label(new_account, tmp_path):
    dst = new_account()
    with GmailStandIn(_account()) as gmail:
        res, report = migrate(gmail, dst, tmp_path, "--workers", "2")
        assert res.code == 0, res.text
        assert gmail.bodies_fetched() == 4  # 4 messages, 7 label folders: each body FETCHed once
        held = _subjects(dst)
        assert held["INBOX"] == [("three labels", ())]
        assert held["Family"] == [("three labels", ())]
        assert held["Work"] == [("later labelled", ()), ("starred", ("\\Flagged",)), ("three labels", ())]
        assert held["Archive"] == [("archived", ())]  # no label: only in All Mail
        assert "Starred" not in held and "Important" not in held and "All Mail" not in held
        assert report["totals"]["copied"] == 6 and report["totals"]["copied_within_destination"] == 2

        fetched = gmail.bodies_fetched()
        res, report = migrate(gmail, dst, tmp_path, report="rerun.json")
        assert res.code == 0 and report["totals"]["copied"] == 0, res.text
        assert gmail.bodies_fetched() == fetched  # a rerun downloads nothing

        gmail.add_label(gmail.messages[3].msgid, "Family")  # as the web client would
        res, report = migrate(gmail, dst, tmp_path, report="label.json")
        assert res.code == 0, res.text
        assert report["totals"]["copied"] == 1 and report["totals"]["copied_within_destination"] == 1
        assert gmail.bodies_fetched() == fetched  # copied within the destination, not downloaded
        assert _subjects(dst)["Family"] == [("later labelled", ()), ("three labels", ())]


def test_labels_as_keywords(new_account, tmp_path):
    dst = new_account()
    with GmailStandIn(_account()[2:3]) as gmail:
        res, _ = migrate(gmail, dst, tmp_path, "--gmail-labels-as-keywords")
    assert res.code == 0, res.text
    assert _subjects(dst)["Work"] == [("starred", ("$Important", "Work", "\\Flagged"))]
