"""POP3 as a source: read-only, one folder, stable UIDs from UIDL, nothing removed from the server."""

from __future__ import annotations

import json

import pytest

from tests import rig
from tests.helpers import migrator, simple_message

pytestmark = pytest.mark.e2e


def test_pop3_to_imap_copies_inbox_once_and_leaves_the_source_alone(src_account, dst_account, tmp_path):
    received = b"Received: from mx.example.com by mail.example.com; Tue, 02 Jun 2020 10:11:12 +0200\r\n"
    msgs = [received + simple_message(i) for i in range(5)] + [simple_message(9)] * 2  # two exact duplicates
    rig.seed(src_account, ["INBOX"], msgs)
    before = rig.snapshot(src_account)
    state = str(tmp_path / "s.sqlite")

    res = migrator("migrate", src_account.pop3_url, dst_account.url, "--state", state, "--report",
                   str(tmp_path / "r.json"), src=src_account, dst=dst_account)
    assert res.code == 0, res.text
    assert json.loads((tmp_path / "r.json").read_text())["totals"]["copied"] == 7

    dst = rig.snapshot(dst_account)[("INBOX",)]
    assert sorted(sha for sha, _f, _d in dst) == sorted(sha for sha, _f, _d in before[("INBOX",)])
    dates = {d for sha, _f, d in dst}
    assert "02-Jun-2020 08:11:12 +0000" in dates  # INTERNALDATE from the Received: header (rig runs in UTC)
    # QUIT without DELE: nothing removed. (Dovecot itself marks POP3-downloaded mail \Seen.)
    after = rig.snapshot(src_account)[("INBOX",)]
    assert sorted(sha for sha, _f, _d in after) == sorted(sha for sha, _f, _d in before[("INBOX",)])

    again = migrator("migrate", src_account.pop3_url, dst_account.url, "--state", state, "--report",
                     str(tmp_path / "r2.json"), src=src_account, dst=dst_account)
    assert again.code == 0, again.text
    assert json.loads((tmp_path / "r2.json").read_text())["totals"]["copied"] == 0

    ok = migrator("verify", src_account.pop3_url, dst_account.url, src=src_account, dst=dst_account)
    assert ok.code == 0, ok.text


def test_pop3_cannot_be_a_destination(src_account, dst_account):
    res = migrator("migrate", src_account.url, dst_account.pop3_url, src=src_account, dst=dst_account)
    assert res.code == 2
    assert "POP3 can only be a source" in res.err
