"""Tests of the test rig itself (real Dovecot)."""
from __future__ import annotations

import hashlib
import socket
import ssl
import time
from datetime import datetime, timedelta, timezone

import pytest
from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError, LoginError

from tests.rig import connect, corpus_messages, create_folder, fetch_bodies, list_folders, seed, snapshot

pytestmark = pytest.mark.e2e

MSG_LF = b"From: a@example.org\nTo: b@example.org\nSubject: lf\n\nline one\nline two\n"
MSG_CRLF = MSG_LF.replace(b"\n", b"\r\n")


@pytest.mark.parametrize("which", ["dovecot_slash", "dovecot_dot"])
def test_instances_start_and_login(request, which):
    d = request.getfixturevalue(which)
    acc = d.new_user()
    c = connect(acc)
    caps = set(c.capabilities())
    for cap in (b"MULTIAPPEND", b"UIDPLUS", b"LITERAL+", b"CONDSTORE", b"QUOTA"):
        assert cap in caps
    # Dovecot advertises SPECIAL-USE only if some mailbox has special_use set
    assert (b"SPECIAL-USE" in caps) == d.special_use
    c.logout()
    with pytest.raises(LoginError):
        IMAPClient(acc.host, port=acc.port, ssl=False).login(acc.user, "wrong")
    assert acc.url == f"imap://{acc.user}@127.0.0.1:{d.port}"
    assert acc.imaps_url.startswith("imaps://") and acc.pop3_url.startswith("pop3://")
    assert acc.env("src") == {"MIGRATOR_SRC_PASSWORD": acc.password}
    assert acc.env("dst") == {"MIGRATOR_DST_PASSWORD": acc.password}


def test_pop3_answers(src_account):
    with socket.create_connection(("127.0.0.1", src_account.pop3_port), timeout=5) as s:
        assert s.recv(100).startswith(b"+OK")


def test_separator_and_prefix(src_account, dot_account):
    c = connect(src_account)
    assert c.namespace().personal == (("", "/"),)
    c.logout()
    c = connect(dot_account)
    assert c.namespace().personal == (("INBOX.", "."),)
    c.logout()
    for acc in (src_account, dot_account):
        seed(acc, ["Archive", "2020"], [MSG_CRLF])
        seed(acc, ["INBOX"], [MSG_CRLF])
    c = connect(dot_account)
    names = {n for _f, _d, n in c.list_folders()}
    assert {"INBOX", "INBOX.Archive.2020"} <= names
    c.logout()
    c = connect(src_account)
    assert "Archive/2020" in {n for _f, _d, n in c.list_folders()}
    c.logout()
    # both snapshot to the same keys
    s1, s2 = snapshot(src_account), snapshot(dot_account)
    assert set(s1) == set(s2) == {("INBOX",), ("Archive", "2020")}
    assert [x[0] for x in s1[("Archive", "2020")]] == [x[0] for x in s2[("Archive", "2020")]]
    assert ("Archive", "2020") in list_folders(dot_account)


def test_seed_bare_lf_served_as_crlf(src_account):
    date = datetime(2020, 2, 3, 4, 5, 6, tzinfo=timezone(timedelta(hours=2)))
    seed(src_account, ["INBOX"], [(MSG_LF, (r"\Seen", "$Label1"), date)])
    snap = snapshot(src_account)
    [(sha, flags, idate)] = snap[("INBOX",)]
    assert sha == hashlib.sha256(MSG_CRLF).hexdigest()
    assert flags == sorted([r"\Seen", "$Label1"])
    # maildir keeps the instant, not the zone; the rig runs Dovecot in UTC
    assert idate == "03-Feb-2020 02:05:06 +0000"
    assert fetch_bodies(src_account, ["INBOX"]) == [MSG_CRLF]


def test_seed_is_byte_exact_for_crlf_and_8bit(src_account):
    raw = b"From: x@y\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\n\r\n8bit caf\xc3\xa9 \xff\r\nend\r\n"
    msgs = [raw, raw + b"more\r\n"]
    seed(src_account, ["Test & Stuff", "Unicode \u00e9"], msgs)
    assert fetch_bodies(src_account, ["Test & Stuff", "Unicode \u00e9"]) == msgs


def test_special_use_on_slash(src_account, dot_account):
    create_folder(src_account, ["Sent"], subscribe=True)
    create_folder(src_account, ["Other"])
    c = connect(src_account)
    flags = {n: set(f) for f, _d, n in c.list_folders()}
    c.logout()
    assert b"\\Sent" in flags["Sent"]
    assert b"\\Sent" not in flags["Other"]
    assert "Drafts" not in flags  # auto = no
    create_folder(dot_account, ["Sent"])
    c = connect(dot_account)
    flags = {n: set(f) for f, _d, n in c.list_folders()}
    c.logout()
    assert b"\\Sent" not in flags["INBOX.Sent"]


def test_quota_overquota(dovecot_slash):
    acc = dovecot_slash.new_user("q", quota="100K")
    big = b"Subject: big\r\n\r\n" + (b"x" * 76 + b"\r\n") * 1000  # ~78 KB
    seed(acc, ["INBOX"], [big])
    with pytest.raises(RuntimeError, match="OVERQUOTA"):
        seed(acc, ["INBOX"], [big])
    # passwd-file is re-read: a same-length quota change takes effect for new sessions
    dovecot_slash.set_quota(acc, "900K")
    seed(acc, ["INBOX"], [big])
    assert len(snapshot(acc)[("INBOX",)]) == 2
    dovecot_slash.set_quota(acc, None)
    seed(acc, ["INBOX"], [big] * 15)


def test_master_user_login(src_account):
    seed(src_account, ["INBOX"], [MSG_CRLF])
    c = connect(src_account, master=True)
    assert c.select_folder("INBOX", readonly=True)[b"EXISTS"] == 1
    c.logout()
    d = src_account.dovecot
    with pytest.raises(LoginError):
        IMAPClient("127.0.0.1", port=src_account.port, ssl=False).login(
            f"{src_account.user}*{d.master_user}", "wrong")


def test_imaps_verifies_with_ca_file(src_account):
    ctx = ssl.create_default_context(cafile=src_account.dovecot.ca_file)
    c = IMAPClient("127.0.0.1", port=src_account.imaps_port, ssl=True, ssl_context=ctx)
    c.login(src_account.user, src_account.password)
    c.logout()
    c = IMAPClient("localhost", port=src_account.imaps_port, ssl=True, ssl_context=ctx)
    c.login(src_account.user, src_account.password)
    c.logout()
    with pytest.raises(ssl.SSLError):  # not trusted without the CA
        IMAPClient("127.0.0.1", port=src_account.imaps_port, ssl=True,
                   ssl_context=ssl.create_default_context())


def test_kill_sessions_drops_connection(src_account, dst_account):
    c1, c2 = connect(src_account), connect(dst_account)
    c1.noop(), c2.noop()
    assert src_account.dovecot.kill_sessions(src_account.user) == 1
    time.sleep(0.2)
    with pytest.raises((IMAPClientError, OSError)):
        c1.noop()
    c2.noop()  # other user untouched
    c2.logout()


def test_users_are_unique(dovecot_slash):
    users = {dovecot_slash.new_user().user for _ in range(20)}
    assert len(users) == 20


def test_corpus_messages():
    msgs = corpus_messages()
    assert len(msgs) > 100
    path, raw = msgs[0]
    assert path.endswith(".eml") and "/" in path and isinstance(raw, bytes)


def test_restart_keeps_ports_and_mail(dovecot_dot):
    acc = dovecot_dot.new_user()
    seed(acc, ["INBOX"], [MSG_CRLF])
    c = connect(acc)
    c.noop()
    dovecot_dot.restart()
    with pytest.raises((IMAPClientError, OSError)):
        c.noop()  # the old session is gone
    assert len(snapshot(acc)[("INBOX",)]) == 1


def test_stop_leaves_no_processes(tmp_path):
    from tests.rig import Dovecot
    d = Dovecot(tmp_path, "tmp", separator="/")
    d.start()
    acc = d.new_user()
    c = connect(acc)
    c.noop()
    assert d.pids()
    d.cleanup()
    assert d.pids() == []
    assert d.master_pid() is None


def test_maildir_naming_limits(src_account, dot_account):
    """Documented Dovecot/Maildir++ behaviour migrator has to live with."""
    c = connect(src_account)
    with pytest.raises(IMAPClientError, match="not allowed"):
        c.create_folder("a.b")  # '.' is the on-disk separator
    c.create_folder("x/y")
    flags = {n: set(f) for f, _d, n in c.list_folders()}
    assert b"\\Noselect" in flags["x"]  # implicit parent is not selectable
    c.logout()
    assert ("x",) not in list_folders(src_account)
    c = connect(dot_account)
    with pytest.raises(IMAPClientError):
        c.create_folder("INBOX.p/q")  # '/' not allowed in names on the '.' instance
    c.logout()
