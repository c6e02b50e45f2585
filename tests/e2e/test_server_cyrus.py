"""Cyrus IMAP 3.6 (Debian 12 packages) as a throwaway test server (tests/servers/cyrus.py).

Needs `.ci/servers/cyrus.sh` to have run as root: without it the fixture errors (never skips).
"""
from __future__ import annotations

import hashlib
import shutil
import tempfile
from datetime import UTC, datetime, timedelta, timezone

import pytest
from imapclient.datetime_util import datetime_to_INTERNALDATE
from imapclient.exceptions import IMAPClientError, LoginError

from tests import rig
from tests.helpers import dt, migrate, migrator, simple_message
from tests.servers.cyrus import Cyrus

pytestmark = pytest.mark.e2e

IST = timezone(timedelta(hours=5, minutes=30))


@pytest.fixture(scope="module")
def cyrus():
    root = tempfile.mkdtemp(prefix="mgr-", dir="/tmp")
    server = Cyrus(root)
    try:
        server.start()  # raises with the log tail if Cyrus is missing or broken
    except BaseException:
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)
        raise
    yield server
    server.cleanup()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def cy_account(cyrus) -> rig.Account:
    return cyrus.new_user("cy")


def _names(account: rig.Account) -> list[str]:
    c = rig.connect(account)
    try:
        return [name for _flags, _delim, name in c.list_folders()]
    finally:
        c.logout()


def test_login_namespace_and_capabilities(cy_account):
    assert cy_account.kind == "cyrus"
    c = rig.connect(cy_account)
    try:
        personal = c.namespace().personal
        assert [tuple(p) for p in personal] == [("INBOX.", ".")]
        caps = set(c.capabilities())
        assert {b"UIDPLUS", b"MULTIAPPEND", b"LITERAL+", b"CONDSTORE", b"QRESYNC", b"BINARY",
                b"ENABLE"} <= caps
        assert _names(cy_account) == ["INBOX"]
        assert c.select_folder("INBOX")[b"EXISTS"] == 0  # the INBOX exists at once
    finally:
        c.logout()
    with pytest.raises(LoginError):
        rig.connect(rig.Account(**{**cy_account.__dict__, "password": "wrong"}))


def test_imaps_with_the_instance_ca(cy_account):
    c = rig.connect(cy_account, ssl_=True)
    try:
        assert c.select_folder("INBOX")[b"EXISTS"] == 0
    finally:
        c.logout()


def test_create_nested_folder(cy_account):
    rig.create_folder(cy_account, ["Projects", "2024", "Q1"], subscribe=True)
    assert "INBOX.Projects.2024.Q1" in _names(cy_account)
    # Cyrus makes the parents real, selectable mailboxes (Dovecot leaves them \Noselect).
    assert {("Projects",), ("Projects", "2024"), ("Projects", "2024", "Q1")} <= set(rig.list_folders(cy_account))


def test_append_flags_keywords_and_internaldate(cy_account):
    msgs = [
        (simple_message(1), ("\\Seen", "\\Flagged", "$Label1", "NonJunk", "$Forwarded"),
         datetime(2019, 3, 14, 15, 9, 26, tzinfo=IST)),
        (simple_message(2), ("\\Answered", "\\Draft", "custom_word"), dt(3, tz_hours=-7)),
        (simple_message(3), (), dt(5, tz_hours=0)),
    ]
    rig.seed(cy_account, ["Mail"], msgs)  # MULTIAPPEND
    got = sorted((sha, flags, date) for sha, flags, date in rig.snapshot(cy_account)[("Mail",)])
    # Keywords are kept; INTERNALDATE keeps the instant, not the zone: served in TZ=UTC.
    assert "14-Mar-2019 09:39:26 +0000" in {date for _sha, _flags, date in got}  # was 15:09:26 +0530
    assert got == sorted((hashlib.sha256(m).hexdigest(), sorted(f),
                          datetime_to_INTERNALDATE(d.astimezone(UTC))) for m, f, d in msgs)
    assert rig.fetch_bodies(cy_account, ["Mail"]) == [m for m, _f, _d in msgs]


def test_what_cyrus_does_to_message_bytes(cy_account):
    """Debian's defaults, measured: munge8bit, CRLF, NUL and header checks."""
    eight = b"From: a@example.com\r\nSubject: caf\xc3\xa9\r\n\r\nbody caf\xc3\xa9\r\n"
    bare_lf = b"From: a@example.com\nSubject: lf\n\nbody\n"
    no_eol = b"From: a@example.com\r\nSubject: no final newline\r\n\r\nbody"
    c = rig.connect(cy_account)
    try:
        for m in (eight, bare_lf, no_eol):
            c.append("INBOX", m)
        with pytest.raises(IMAPClientError, match="Message contains NUL characters"):
            c.append("INBOX", b"From: a@example.com\r\nSubject: nul\r\n\r\nbo\x00dy\r\n")
        with pytest.raises(IMAPClientError, match="Message contains invalid header"):
            c.append("INBOX", b"Not a header line at all\r\n\r\nbody\r\n")
    finally:
        c.logout()
    assert rig.fetch_bodies(cy_account, ["INBOX"]) == [
        # munge8bit: 8-bit octets in the header become "X", same size; the body is untouched
        b"From: a@example.com\r\nSubject: cafXX\r\n\r\nbody caf\xc3\xa9\r\n",
        b"From: a@example.com\r\nSubject: lf\r\n\r\nbody\r\n",  # bare LF stored as CRLF
        no_eol,
    ]


def test_many_connections_for_one_user(cy_account):
    conns = [rig.connect(cy_account) for _ in range(12)]
    try:
        for c in conns:
            assert c.select_folder("INBOX")[b"EXISTS"] == 0
    finally:
        for c in conns:
            c.logout()


def test_kill_sessions_then_immediate_reconnect(cyrus):
    a, b = cyrus.new_user("ka"), cyrus.new_user("kb")
    rig.seed(a, ["INBOX"], [simple_message(1)])
    ca, cb = rig.connect(a), rig.connect(b)
    ca.select_folder("INBOX")
    cb.noop()
    assert cyrus.kill_sessions(a.user) == 1
    with pytest.raises((IMAPClientError, OSError)):
        ca.noop()
    cb.noop()  # the other user's session is untouched
    again = rig.connect(a)  # at once: no wait needed
    assert again.select_folder("INBOX")[b"EXISTS"] == 1
    assert cyrus.kill_sessions() >= 2  # all sessions: cb and again
    for c in (cb, again):
        with pytest.raises((IMAPClientError, OSError)):
            c.noop()


def test_restart_keeps_ports_and_mail(cyrus, cy_account):
    rig.seed(cy_account, ["INBOX"], [(simple_message(1), ("\\Seen",), dt(1))])
    before = rig.snapshot(cy_account)
    port = cyrus.port
    cyrus.restart()
    assert cyrus.port == port
    assert rig.snapshot(cy_account) == before


def test_two_instances_at_once(cyrus, tmp_path_factory):
    root = tempfile.mkdtemp(prefix="mgr-", dir="/tmp")
    other = Cyrus(root, "other")
    try:
        other.start()
        assert {other.port, other.imaps_port}.isdisjoint({cyrus.port, cyrus.imaps_port})
        assert set(other.pids()).isdisjoint(cyrus.pids())
        acc = other.new_user("two")
        rig.seed(acc, ["INBOX"], [simple_message(1)])
        assert len(rig.fetch_bodies(acc, ["INBOX"])) == 1
    finally:
        other.cleanup()
        shutil.rmtree(root, ignore_errors=True)
    assert other.pids() == []
    c = rig.connect(cyrus.new_user("still"))  # the first instance still serves
    c.logout()


ROUND_TRIP_FOLDERS = {
    ("INBOX",): 3,
    ("Archive",): 2,
    ("Archive", "2020"): 2,
    ("Archive", "2020", "Q1"): 1,
    ("Sent Items",): 2,
    ("Éléments envoyés",): 1,
    ("Отправленные",): 1,
    ("Empty",): 0,
    ("Parent", "Child"): 1,
}
FLAG_SETS = [(), ("\\Seen",), ("\\Seen", "\\Flagged"), ("\\Answered", "$Forwarded"), ("\\Draft", "NonJunk", "$Label1")]


def test_migrate_dovecot_to_cyrus_and_back(dovecot_slash, cyrus, tmp_path):
    src, cy, back = dovecot_slash.new_user("src"), cyrus.new_user("mig"), dovecot_slash.new_user("back")
    n = 0
    for folder, count in ROUND_TRIP_FOLDERS.items():
        if count == 0:
            rig.create_folder(src, list(folder))
        else:
            rig.seed(src, list(folder), [(simple_message(n + k), FLAG_SETS[(n + k) % 5],
                                          dt(n + k, tz_hours=(n + k) % 5 - 2)) for k in range(count)])
        n += count
    before = rig.snapshot(src)

    res, report = migrate(src, cy, tmp_path / "to-cyrus")
    assert res.code == 0, res.text
    assert report["totals"]["copied"] == n
    on_cyrus = rig.snapshot(cy)
    # Dovecot leaves "Parent" \Noselect; Cyrus's "INBOX.Parent" is a real (empty) mailbox.
    assert on_cyrus.pop(("Parent",)) == []
    assert on_cyrus == before  # bytes, flags, keywords, INTERNALDATE (both serve +0000)
    names = set(_names(cy))
    assert {"INBOX.Archive.2020.Q1", "INBOX.Sent Items", "INBOX.Éléments envoyés", "INBOX.Empty"} <= names

    res, report = migrate(cy, back, tmp_path / "back")
    assert res.code == 0, res.text
    after = rig.snapshot(back)
    assert after.pop(("Parent",)) == []  # now a real folder on Dovecot too
    assert after == before


def test_migrate_to_cyrus_what_it_refuses_or_changes(dovecot_slash, cyrus, tmp_path):
    src, cy = dovecot_slash.new_user("src"), cyrus.new_user("chg")
    eight = b"From: a@example.com\r\nSubject: caf\xc3\xa9\r\nMessage-ID: <8bit@test.example>\r\n\r\nbody\r\n"
    headerless = b"This is not a header line\r\n\r\nbody\r\n"
    rig.seed(src, ["INBOX"], [(simple_message(1), ("\\Seen",), dt(1)), (eight, ("$Label1",), dt(2)),
                              (headerless, (), dt(3))])

    res, report = migrate(src, cy, tmp_path / "a")
    assert res.code == 1, res.text
    bodies = rig.fetch_bodies(cy, ["INBOX"])
    assert bodies == [simple_message(1), eight.replace(b"caf\xc3\xa9", b"cafXX")]  # munge8bit
    # Cyrus's munge8bit rewrites the header at the same size: the copy is read back (8-bit octets
    # put it at risk), found changed and reported; the header Cyrus cannot parse is refused.
    assert sorted(f["reason"] for f in report["failures"]) == [
        "rejected by the destination: Message contains invalid header",
        "the destination server changed the message while storing it: 2 8-bit octet(s) in the header replaced"]
    assert report["totals"]["copied"] == 1
    # A rerun reports it again and copies nothing; so does one without the state (loose form).
    res, again = migrate(src, cy, tmp_path / "a", report="again.json")
    assert (res.code, again["totals"]["copied"], again["totals"]["failed"]) == (1, 0, 2)
    res, fresh = migrate(src, cy, tmp_path / "a", "--reset-state", report="fresh.json")
    assert (res.code, fresh["totals"]["copied"], fresh["totals"]["failed"]) == (1, 0, 2)
    assert len(rig.fetch_bodies(cy, ["INBOX"])) == 2

    # verify compares SHA-256 of the bytes: it does see the difference.
    res = migrator("verify", src.url, cy.url, src=src, dst=cy)
    assert res.code == 1, res.text
