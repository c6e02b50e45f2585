"""Courier-IMAP 5 as a throwaway test server (tests/servers/courier.py), and migrator against it."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from datetime import datetime, timedelta, timezone

import pytest
from imapclient import IMAPClient
from imapclient.exceptions import LoginError

from tests import rig
from tests.helpers import dt, migrate, migrator, simple_message
from tests.servers.courier import Courier

pytestmark = pytest.mark.e2e

CEST = timezone(timedelta(hours=2))
NPT = timezone(timedelta(hours=5, minutes=45))


@pytest.fixture(scope="module")
def courier():
    root = tempfile.mkdtemp(prefix="mgr-", dir="/tmp")
    c = Courier(root)
    try:
        c.start()  # raises with the log tail: the test errors, never skips
    except BaseException:
        c.cleanup()
        shutil.rmtree(root, ignore_errors=True)
        raise
    yield c
    c.cleanup()
    shutil.rmtree(root, ignore_errors=True)


def append_each(account, components, messages) -> list[tuple]:
    """One APPEND per message (Courier has no MULTIAPPEND: rig.seed's multiappend is refused)."""
    c = rig.connect(account)
    try:
        name = rig.create_folder(account, components, client=c)
        return [c.append(name, raw, flags=flags, msg_time=date) for raw, flags, date in messages]
    finally:
        c.logout()


def _alive(client: IMAPClient) -> bool:
    try:
        client.noop()
        return True
    except Exception:  # noqa: BLE001  (abort, socket error: the session is gone)
        return False


def test_login_capabilities_and_namespace(courier):
    acc = courier.new_user()
    assert (acc.kind, acc.separator, acc.prefix, acc.pop3_port) == ("courier", ".", "INBOX.", 0)
    assert acc.url == f"imap://{acc.user}@127.0.0.1:{courier.port}"
    with IMAPClient(acc.host, port=acc.port, ssl=False) as raw:
        before = set(raw.capabilities())
        with pytest.raises(LoginError):
            raw.login(acc.user, "wrong")
    assert {b"IMAP4REV1", b"UIDPLUS", b"IDLE", b"NAMESPACE", b"STARTTLS"} <= before
    assert b"LOGINDISABLED" not in before  # plaintext LOGIN allowed on loopback
    c = rig.connect(acc)
    try:
        after = set(c.capabilities())
        for absent in (b"MULTIAPPEND", b"LITERAL+", b"CONDSTORE", b"BINARY", b"MOVE", b"SPECIAL-USE"):
            assert absent not in after
        assert b"STARTTLS" not in after
        ns = c.namespace()
        assert [tuple(x) for x in ns.personal] == [("INBOX.", ".")]
        assert ns.other is None
        assert c.select_folder("INBOX")[b"EXISTS"] == 0  # INBOX ready at once
    finally:
        c.logout()
    c = rig.connect(acc, ssl_=True)  # imaps with the instance's trustme CA
    try:
        assert c.noop()[0]
    finally:
        c.logout()


def test_new_users_log_in_at_once(courier):
    for _ in range(5):
        acc = courier.new_user("fast")
        c = rig.connect(acc)
        assert c.select_folder("INBOX")[b"EXISTS"] == 0
        c.logout()
    with pytest.raises(NotImplementedError):
        courier.new_user(quota="1M")


def test_create_nested_folder(courier):
    acc = courier.new_user()
    name = rig.create_folder(acc, ["Archive", "2020", "Q1"])
    assert name == "INBOX.Archive.2020.Q1"
    assert sorted(rig.list_folders(acc)) == [("Archive", "2020", "Q1"), ("INBOX",)]
    c = rig.connect(acc)
    try:
        flags = {name: fl for fl, _d, name in c.list_folders()}
    finally:
        c.logout()
    assert b"\\Noselect" in flags["INBOX.Archive"]  # parents made on the way are not mailboxes


def test_append_flags_keywords_and_internaldate(courier):
    acc = courier.new_user()
    crlf = simple_message(1)
    no_final_newline = b"From: a@example.org\r\nSubject: no final newline\r\n\r\nlast line"
    lf_only = b"From: a@example.org\nSubject: bare LF\n\nline one\nline two\n"
    date = datetime(2019, 3, 14, 15, 9, 26, tzinfo=CEST)
    answers = append_each(acc, ["Work", "Sub"], [
        (crlf, ("\\Seen", "\\Flagged", "$Forwarded", "NonJunk"), date),
        (no_final_newline, ("\\Answered", "$Label1"), datetime(2020, 1, 2, 3, 4, 5, tzinfo=NPT)),
        (lf_only, (), date),
    ])
    assert all(b"APPENDUID" in a for a in answers)  # UIDPLUS
    snap = rig.snapshot(acc)
    assert set(snap) == {("INBOX",), ("Work", "Sub")}
    got = {(tuple(flags), when) for _sha, flags, when in snap[("Work", "Sub")]}
    # Flags and keywords kept; INTERNALDATE keeps the instant, not the zone (Maildir mtime, TZ=UTC).
    assert got == {
        (("$Forwarded", "NonJunk", "\\Flagged", "\\Seen"), "14-Mar-2019 13:09:26 +0000"),
        (("$Label1", "\\Answered"), "01-Jan-2020 21:19:05 +0000"),
        ((), "14-Mar-2019 13:09:26 +0000"),
    }
    bodies = rig.fetch_bodies(acc, ["Work", "Sub"])
    assert bodies[0] == crlf
    assert bodies[1] == no_final_newline + b"\r\n"  # Courier adds the missing final CRLF
    assert bodies[2] == lf_only.replace(b"\n", b"\r\n")  # bare LF served as CRLF (stored as LF)


def test_multiappend_is_refused(courier):
    acc = courier.new_user()
    c = rig.connect(acc)
    try:
        with pytest.raises(Exception):  # noqa: B017  BAD: no MULTIAPPEND (rig.seed cannot be used)
            c.multiappend("INBOX", [simple_message(1), simple_message(2)])
    finally:
        c.logout()


def test_kill_sessions(courier):
    a, b = courier.new_user("ka"), courier.new_user("kb")
    a1, a2, b1 = rig.connect(a), rig.connect(a), rig.connect(b)
    for c in (a1, a2, b1):
        c.select_folder("INBOX")
    assert courier.kill_sessions(a.user) == 2
    time.sleep(0.2)
    assert not _alive(a1) and not _alive(a2)
    assert _alive(b1)
    again = rig.connect(a)  # an immediate reconnect is served
    assert again.select_folder("INBOX")[b"EXISTS"] == 0
    assert courier.kill_sessions() >= 2
    time.sleep(0.2)
    assert not _alive(again) and not _alive(b1)
    assert courier.session_pids() == []
    rig.connect(b).logout()


def test_restart_keeps_accounts_and_mail(courier):
    acc = courier.new_user()
    append_each(acc, ["INBOX"], [(simple_message(7), ("\\Seen",), dt(1))])
    port = courier.port
    courier.restart()
    assert courier.port == port
    assert len(rig.snapshot(acc)[("INBOX",)]) == 1


def test_instances_are_separate_and_the_host_untouched(courier):
    root = tempfile.mkdtemp(prefix="mgr-", dir="/tmp")
    other = Courier(root, name="other", tls=False)
    try:
        other.start()
        mine, theirs = courier.new_user(), other.new_user()
        assert other.port != courier.port and other.ca_file is None and other.imaps_port == 0
        with pytest.raises(LoginError):
            IMAPClient("127.0.0.1", port=other.port, ssl=False).login(mine.user, mine.password)
        rig.connect(theirs).logout()
        # The server runs in its own mount namespace; the test process and the host do not see it.
        assert not os.path.exists("/etc/courier") and not os.path.exists("/run/courier")
        assert not os.path.exists("/usr/bin/imapd")
        own = os.readlink("/proc/self/ns/mnt")
        nss = {os.readlink(f"/proc/{p}/ns/mnt") for p in other.pids()}
        assert own not in nss and len(nss) == 1
        assert not nss & {os.readlink(f"/proc/{p}/ns/mnt") for p in courier.pids()}
    finally:
        other.cleanup()
        shutil.rmtree(root, ignore_errors=True)
    assert other.pids() == []


def test_migrate_dovecot_to_courier_and_back(courier, new_account, tmp_path):
    """The real CLI: Dovecot '/' -> Courier 'INBOX.' '.' -> Dovecot '/'."""
    src, back = new_account("slash"), new_account("slash")
    dst = courier.new_user("mig")
    folders = {("INBOX",): 3, ("Archive",): 2, ("Archive", "2020"): 2, ("Sent Items",): 1,
               ("Éléments envoyés",): 1, ("Empty",): 0}
    flag_sets = [(), ("\\Seen",), ("\\Seen", "\\Flagged"), ("\\Answered", "$Forwarded"),
                 ("\\Draft", "NonJunk", "$Label1")]
    n = 0
    for folder, count in folders.items():
        if count == 0:
            rig.create_folder(src, list(folder))
        else:
            rig.seed(src, list(folder), [(simple_message(n + k), flag_sets[(n + k) % 5],
                                          dt(n + k, tz_hours=(n + k) % 5 - 2)) for k in range(count)])
        n += count
    before = rig.snapshot(src)

    res, report = migrate(src, dst, tmp_path / "to-courier")
    assert res.code == 0, res.text
    assert report["totals"]["copied"] == n
    assert rig.snapshot(dst) == before  # bodies, flags, keywords, INTERNALDATE (both in UTC)
    c = rig.connect(dst)
    try:
        names = {name for _f, _d, name in c.list_folders()}
    finally:
        c.logout()
    assert {"INBOX.Archive.2020", "INBOX.Sent Items", "INBOX.Empty", "INBOX.Éléments envoyés"} <= names

    res, report = migrate(dst, back, tmp_path / "back")
    assert res.code == 0, res.text
    assert rig.snapshot(back) == before


def test_migrate_reports_what_courier_alters(courier, new_account, tmp_path):
    """A message without a final newline arrives with CRLF added: migrator says so, exit 1."""
    src = new_account("slash")
    dst = courier.new_user("alt")
    odd = b"From: a@example.org\r\nSubject: no final newline\r\n\r\nlast line"
    rig.seed(src, ["INBOX"], [(simple_message(1), ("\\Seen",), dt(1)), (odd, (), dt(2))])
    res, report = migrate(src, dst, tmp_path)
    assert res.code == 1, res.text
    assert report["totals"]["failed"] == 1
    assert [f for f in report["failures"] if "changed the message" in f["reason"]]
    assert sorted(rig.fetch_bodies(dst, ["INBOX"])) == sorted([simple_message(1), odd + b"\r\n"])


def _many_parts(n: int) -> bytes:
    parts = "".join(f"--b\r\nContent-Type: text/plain\r\n\r\npart {i}\r\n" for i in range(n))
    return (f"From: a@example.org\r\nSubject: {n} parts\r\nMIME-Version: 1.0\r\n"
            f"Content-Type: multipart/mixed; boundary=b\r\n\r\n{parts}--b--\r\n").encode()


def test_more_than_299_mime_parts_are_served_truncated(courier):
    """Courier's rfc2045 parser stops after 300 parts (the preamble counts as one): the file is
    stored whole, but BODY[] and RFC822.SIZE end at the boundary that opens part 300."""
    acc = courier.new_user()
    ok, big = _many_parts(299), _many_parts(301)
    append_each(acc, ["INBOX"], [(ok, (), dt(1)), (big, (), dt(2))])
    served = rig.fetch_bodies(acc, ["INBOX"])
    assert served[0] == ok
    cut = big.index(b"--b\r\nContent-Type: text/plain\r\n\r\npart 299\r\n") + len(b"--b\r\n")
    assert served[1] == big[:cut]
    c = rig.connect(acc)
    try:
        c.select_folder("INBOX", readonly=True)
        sizes = [d[b"RFC822.SIZE"] for _u, d in sorted(c.fetch(c.search("ALL"), ["RFC822.SIZE"]).items())]
    finally:
        c.logout()
    assert sizes == [len(ok), cut]
    stored = list((courier.mail_dir / acc.user / "Maildir").glob("*/*,S=*"))
    assert sorted(p.stat().st_size for p in stored) == sorted([len(ok.replace(b"\r\n", b"\n")),
                                                               len(big.replace(b"\r\n", b"\n"))])


def test_migrate_from_courier_copies_what_it_serves_and_reports_a_message_served_cut_short(courier, new_account,
                                                                                          tmp_path):
    """A 301-part message leaves Courier truncated (as served), RFC822.SIZE agreeing with the cut
    body: copied as served, and reported (it ends by opening a part, after hundreds of them)."""
    src = courier.new_user("src")
    dst = new_account("slash")
    big = _many_parts(301)
    append_each(src, ["INBOX"], [(big, ("\\Seen",), dt(1)), (simple_message(1), (), dt(2))])
    res, report = migrate(src, dst, tmp_path)
    assert res.code == 1, res.text
    assert report["totals"]["copied"] == 2
    assert [f["reason"][:37] for f in report["failures"]] == ["the source served it cut short: it en"]
    assert rig.snapshot(dst) == rig.snapshot(src)
    assert max(len(b) for b in rig.fetch_bodies(dst, ["INBOX"])) < len(big)


def test_a_message_refused_in_a_batch_leaves_the_others_once(courier, tmp_path):
    """Courier has no MULTIAPPEND: a batch goes one APPEND at a time, and those before a refused
    message are stored when it is refused (here for its INTERNALDATE: Courier refuses one before
    1970, "Error in IMAP command received by server"). They are confirmed as copied, not sent
    again one by one as a refused MULTIAPPEND batch is (nothing of which was stored): no duplicates."""
    from migrator.stores.archive import ArchiveStore
    from migrator.stores.base import AppendItem

    dates = ["14-Mar-2019 15:09:26 +0200"] * 5
    dates[2] = "13-Feb-1969 23:32:54 -0330"
    bodies = [simple_message(i) for i in range(5)]
    archive = tmp_path / "src.archive"
    arc = ArchiveStore(str(archive))
    try:
        arc.create_folder(("INBOX",))
        arc.append(("INBOX",), [AppendItem(body, (), date) for body, date in zip(bodies, dates, strict=True)])
    finally:
        arc.close()
    dst = courier.new_user("rej")
    res = migrator("migrate", f"archive://{archive}", dst.url, "--state", str(tmp_path / "s.sqlite"),
                   "--report", str(tmp_path / "r.json"), dst=dst)
    assert res.code == 1, res.text
    report = json.loads((tmp_path / "r.json").read_text())
    assert [(f["uid"], f["reason"]) for f in report["failures"]] == [
        (3, "rejected by the destination: Error in IMAP command received by server.")]
    assert report["totals"]["copied"] == 4, report["totals"]
    assert sorted(rig.fetch_bodies(dst, ["INBOX"])) == sorted(bodies[:2] + bodies[3:])
