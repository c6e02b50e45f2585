"""GNU Mailutils imap4d 3.15 as a throwaway test server (tests/servers/imap4d.py).

These tests pin down what the server does today, quirks included: migrator must cope with (or
report) them, so the test server has to show them.  Facts: see the docstring of
tests/servers/imap4d.py.
"""

from __future__ import annotations

import os
import pwd
import re
import signal
import socket
import threading
import time
from base64 import b64encode
from datetime import datetime, timedelta, timezone

import pytest
from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError

from tests import rig
from tests.helpers import dt, migrate, simple_message
from tests.servers.imap4d import Imap4d

pytestmark = pytest.mark.e2e

IST = timezone(timedelta(hours=5, minutes=30))


@pytest.fixture(scope="module")
def imap4d(tmp_path_factory):
    """One imap4d for this module: default settings (mbox, GNU SASL on)."""
    server = Imap4d(tmp_path_factory.mktemp("imap4d"))
    try:
        server.start()  # raises with the log tail: the test errors, never skips
    except BaseException:
        server.cleanup()
        raise
    yield server
    server.cleanup()


@pytest.fixture(scope="module")
def imap4d_login_only(tmp_path_factory):
    """imap4d with GNU SASL off: only LOGIN, so migrator gets past authentication."""
    server = Imap4d(tmp_path_factory.mktemp("imap4d-login"), name="imap4d-login", sasl=False)
    try:
        server.start()
    except BaseException:
        server.cleanup()
        raise
    yield server
    server.cleanup()


class Raw:
    """A bare IMAP connection, to see exact response bytes."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.file = self.sock.makefile("rb")
        self.n = 0
        self.greeting = self.file.readline()

    def line(self) -> bytes:
        return self.file.readline()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def cmd(self, text: str, literal: bytes | None = None) -> list[bytes]:
        """Send a command (with one synchronizing literal last if given); return the raw lines
        up to and including the tagged one."""
        self.n += 1
        tag = f"r{self.n}"
        if literal is None:
            self.send(f"{tag} {text}\r\n".encode())
        else:
            self.send(f"{tag} {text} {{{len(literal)}}}\r\n".encode())
            cont = self.line()
            if not cont.startswith(b"+"):
                return [cont]
            self.send(literal + b"\r\n")
        out = []
        while True:
            line = self.line()
            if not line:
                raise EOFError(out)
            out.append(line)
            m = re.search(rb"\{(\d+)\}\r\n$", line)
            if m:
                out.append(self.file.read(int(m.group(1))))
            elif line.startswith(tag.encode() + b" "):
                return out

    def login(self, account: rig.Account) -> None:
        assert self.cmd(f'LOGIN {account.user} "{account.password}"')[-1].endswith(b"OK LOGIN Completed\r\n")

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def _alive(c: IMAPClient) -> bool:
    try:
        c.noop()
        return True
    except (IMAPClientError, OSError):
        return False


def _message(i: int, extra: str = "") -> bytes:
    return simple_message(i, extra_headers=extra)


# ------------------------------------------------------------------ basics
def test_login_capabilities_namespace(imap4d):
    acc = imap4d.new_user()
    assert acc.kind == "imap4d" and acc.server is imap4d
    assert (acc.separator, acc.prefix, imap4d.ca_file) == ("/", "", None)
    raw = Raw(imap4d.port)
    try:
        assert raw.greeting == b"* OK IMAP4rev1\r\n"
        before = raw.cmd("CAPABILITY")[0].split()
        raw.login(acc)
        after_login = raw.cmd("CAPABILITY")[0].split()
    finally:
        raw.close()
    raw = Raw(imap4d.port)
    try:
        raw.send(b"a1 AUTHENTICATE PLAIN\r\n")
        raw.line()
        raw.send(b64encode(b"\0" + acc.user.encode() + b"\0" + acc.password.encode()) + b"\r\n")
        raw.line()
        after_auth = raw.cmd("CAPABILITY")[0].split()
    finally:
        raw.close()
    base = [b"*", b"CAPABILITY", b"IMAP4rev1", b"NAMESPACE", b"ID", b"IDLE", b"LITERAL+", b"UNSELECT"]
    assert before[:8] == base and b"AUTH=PLAIN" in before and b"AUTH=LOGIN" in before
    assert after_login == before  # unchanged by LOGIN
    assert after_auth == base + [b"AUTH=GSSAPI"]  # after AUTHENTICATE only AUTH=GSSAPI is left
    for missing in (b"UIDPLUS", b"MULTIAPPEND", b"CONDSTORE", b"ENABLE", b"MOVE", b"SPECIAL-USE", b"STARTTLS"):
        assert missing not in before and missing not in after_auth

    c = rig.connect(acc)  # LOGIN
    try:
        assert c.namespace() == ((("", "/"),), None, None)
        assert c.list_folders() == [((b"\\NoInferiors",), None, "INBOX")]  # NIL delimiter on INBOX
    finally:
        c.logout()


def test_users_are_virtual_unique_and_need_their_domain(imap4d):
    a, b = imap4d.new_user("v"), imap4d.new_user("v")
    assert a.user != b.user and a.user.endswith("@imap4d.test") and a.user.startswith("v" + rig.worker_id())
    local = a.user.split("@")[0]
    with pytest.raises(KeyError):
        pwd.getpwnam(local)  # not a system user
    c = IMAPClient("127.0.0.1", port=imap4d.port, ssl=False, timeout=10)
    with pytest.raises(IMAPClientError, match="rejected"):
        c.login(local, a.password)  # virtdomain needs the domain part
    c.shutdown()
    assert imap4d.mailbox_path(a).parent.is_relative_to(imap4d.dir)


def test_create_nested_folder(imap4d):
    acc = imap4d.new_user()
    name = rig.create_folder(acc, ["Work", "2020", "Q1"])
    assert name == "Work/2020/Q1"
    c = rig.connect(acc)
    try:
        listed = {n: tuple(f) for f, _d, n in c.list_folders()}
    finally:
        c.logout()
    assert listed == {"INBOX": (b"\\NoInferiors",), "Work": (b"\\NoSelect",),
                      "Work/2020": (b"\\NoSelect",), "Work/2020/Q1": (b"\\NoInferiors",)}
    assert rig.list_folders(acc) == [("INBOX",), ("Work", "2020", "Q1")]
    assert imap4d.mailbox_path(acc, ["Work", "2020", "Q1"]).is_file()  # an mbox file


def test_append_flags_and_internaldate_read_back(imap4d):
    acc = imap4d.new_user()
    rig.create_folder(acc, ["Box"])
    sent = [_message(1), _message(2)]
    c = rig.connect(acc)
    try:  # no MULTIAPPEND (rig.seed would need it): one APPEND each, Box not selected
        assert c.append("Box", sent[0], flags=("\\Seen", "\\Flagged"),
                        msg_time=datetime(2019, 3, 14, 15, 9, 26, tzinfo=IST)).startswith(b"APPEND Completed")
        c.append("Box", sent[1], flags=("\\Answered",), msg_time=dt(0, tz_hours=-7))
    finally:
        c.logout()
    snap = rig.snapshot(acc)
    assert set(snap) == {("INBOX",), ("Box",)} and snap[("INBOX",)] == []
    got = {(tuple(flags_), date) for _sha, flags_, date in snap[("Box",)]}
    # Flags survive.  INTERNALDATE keeps the wall-clock digits and loses the offset: the mbox
    # "From " line has no zone and is read back as +0000 (a different instant).
    assert got == {(("\\Flagged", "\\Seen"), "14-Mar-2019 15:09:26 +0000"),
                   (("\\Answered",), "14-Mar-2019 15:09:26 +0000")}

    bodies = rig.fetch_bodies(acc, ["Box"])
    # BODY[] is not what was sent: mbox status fields are added at APPEND time, and the
    # first message of the mailbox also carries X-IMAPbase (UIDVALIDITY, UIDNEXT).
    head0, _, rest0 = sent[0].partition(b"\r\n\r\n")
    m = re.fullmatch(re.escape(head0) + rb"\r\nX-IMAPbase: (\d+) +3\r\nX-UID: 1\r\nStatus: FR\r\n\r\n"
                     + re.escape(rest0), bodies[0])
    assert m, bodies[0]
    head1, _, rest1 = sent[1].partition(b"\r\n\r\n")
    assert bodies[1] == head1 + b"\r\nX-UID: 2\r\nStatus: A\r\n\r\n" + rest1

    c = rig.connect(acc)
    try:
        c.select_folder("Box", readonly=True)
        sizes = c.fetch(c.search("ALL"), ["RFC822.SIZE", "BODY.PEEK[]"])
    finally:
        c.logout()
    assert all(d[b"RFC822.SIZE"] == len(d[b"BODY[]"]) for d in sizes.values())


def test_keywords_are_refused_with_bad(imap4d):
    acc = imap4d.new_user()
    raw = Raw(imap4d.port)
    try:
        raw.login(acc)
        assert raw.cmd("CREATE K")[-1] == b"r2 OK CREATE Completed\r\n"
        assert raw.cmd("APPEND K ($Forwarded)", _message(1)) == [b"r3 BAD APPEND Unrecognized flag\r\n"]
        assert raw.cmd("APPEND K (\\Seen NonJunk)", _message(1)) == [b"r4 BAD APPEND Unrecognized flag\r\n"]
        assert raw.cmd("APPEND K (\\Seen)", _message(1))[-1] == b"r5 OK APPEND Completed\r\n"
        sel = b"".join(raw.cmd("SELECT K"))
        assert b"[PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)]" in sel  # no \*
        assert raw.cmd("STORE 1 +FLAGS ($Forwarded)") == [b"r7 BAD STORE Unrecognized flag\r\n"]
        assert raw.cmd("UID STORE 1 +FLAGS (NonJunk)") == [b"r8 BAD UID STORE Unrecognized flag\r\n"]
        assert raw.cmd("STORE 1 +FLAGS (\\Answered)")[-1] == b"r9 OK STORE Completed\r\n"
    finally:
        raw.close()


def test_authenticate_plain_success_line_ends_in_bare_lf(imap4d):
    acc = imap4d.new_user()
    raw = Raw(imap4d.port)
    try:
        raw.send(b"a1 AUTHENTICATE PLAIN\r\n")
        assert raw.line() == b"+ \r\n"
        raw.send(b64encode(b"\0" + acc.user.encode() + b"\0" + acc.password.encode()) + b"\r\n")
        assert raw.line() == b"a1 OK AUTHENTICATE PLAIN authentication successful\n"  # LF, no CR
        assert raw.cmd("NOOP") == [b"r1 OK NOOP Completed\r\n"]  # the session works
    finally:
        raw.close()
    c = IMAPClient("127.0.0.1", port=imap4d.port, ssl=False, timeout=10)
    try:  # LOGIN's tagged OK is a proper CRLF line
        assert c.login(acc.user, acc.password) == b"LOGIN Completed"
    finally:
        c.logout()


# ---------------------------------------------------------- mbox data loss
def test_append_to_the_selected_empty_mailbox_keeps_only_the_first(imap4d):
    """A session that SELECTed an empty mbox folder sees only the first message appended after
    that (by itself or by anyone); when it leaves the folder (CLOSE, UNSELECT, EXPUNGE, SELECT of
    another folder, LOGOUT, a dropped connection) imap4d rewrites the file from that view: every
    later message is deleted, and the first loses the flags given at APPEND.  Non-empty at
    SELECT, or EXAMINE: nothing is lost."""
    acc = imap4d.new_user()
    rig.create_folder(acc, ["Empty"])
    rig.create_folder(acc, ["NonEmpty"])
    c = rig.connect(acc)
    c.append("NonEmpty", _message(0))
    c.select_folder("Empty")
    c.select_folder("NonEmpty")  # leaves Empty: nothing to lose yet
    c.select_folder("Empty")
    for i in range(1, 4):
        c.append("Empty", _message(i), flags=("\\Seen",), msg_time=dt(i))
    for i in range(1, 4):
        c.append("NonEmpty", _message(i), flags=("\\Seen",), msg_time=dt(i))

    other = rig.connect(acc)
    try:  # while the session stays in the folder, the file holds all three
        assert other.folder_status("Empty", ["MESSAGES"])[b"MESSAGES"] == 3
        assert c.search("ALL") == [1]  # the selecting session sees only the first
        c.noop()
        assert c.search("ALL") == [1]
        c.logout()
        assert other.folder_status("Empty", ["MESSAGES"])[b"MESSAGES"] == 1
    finally:
        other.logout()
    snap = rig.snapshot(acc)
    assert [(f, d) for _s, f, d in snap[("Empty",)]] == [([], "15-Mar-2019 15:09:26 +0000")]
    assert sorted(f for _s, f, _d in snap[("NonEmpty",)]) == [[], ["\\Seen"], ["\\Seen"], ["\\Seen"]]
    assert rig.fetch_bodies(acc, ["Empty"])[0].startswith(_message(1).split(b"\r\n\r\n")[0])


def test_refused_append_can_still_write_into_the_previous_message(imap4d):
    """APPEND without a date of a message whose first line is "From ADDR" (no date): answered
    NO, yet written to the mbox (it takes a UID) behind an invalid separator, so it becomes
    part of the previous message's body.  A message without From: is refused cleanly."""
    acc = imap4d.new_user()
    raw = Raw(imap4d.port)
    try:
        raw.login(acc)
        raw.cmd("CREATE G")
        first = b"From: a@example.com\r\nSubject: first\r\n\r\nbody1\r\n"
        glued = b"From x@example.com\r\nFrom: x@example.com\r\nSubject: second\r\n\r\nbody2\r\n"
        assert raw.cmd("APPEND G", first)[-1] == b"r3 OK APPEND Completed\r\n"
        assert raw.cmd("APPEND G", glued) == [b"r4 NO APPEND [TRYCREATE] failed\r\n"]
        assert raw.cmd("APPEND G", b"Subject: no from\r\n\r\nx\r\n") == [b"r5 NO APPEND [TRYCREATE] failed\r\n"]
        status = raw.cmd("STATUS G (MESSAGES UIDNEXT)")[0]
    finally:
        raw.close()
    assert status == b"* STATUS G (MESSAGES 1 UIDNEXT 3)\r\n"
    [body] = rig.fetch_bodies(acc, ["G"])
    assert body.endswith(b"\r\nX-UID: 1\r\n\r\nbody1\r\n\r\nFrom x@example.com \r\nFrom: x@example.com\r\n"
                         b"Subject: second\r\nX-UID: 2\r\n\r\nbody2\r\n")


# ---------------------------------------------------------------- sessions
def test_kill_sessions(imap4d):
    a, b = imap4d.new_user("k"), imap4d.new_user("k")
    rig.create_folder(a, ["F"])
    ca1, ca2, cb = rig.connect(a), rig.connect(a), rig.connect(b)
    ca1.select_folder("F")
    ca1.append("F", _message(1))
    assert len(imap4d.session_pids(a.user)) == 2
    assert imap4d.kill_sessions(a.user) == 2
    assert not _alive(ca1) and not _alive(ca2)
    assert _alive(cb)
    # an immediate reconnect works: no stale lock (imap4d locks the mbox only inside a command)
    c = rig.connect(a)
    try:
        c.select_folder("F")
        c.append("F", _message(2))
        assert c.search("ALL") == [1, 2]
    finally:
        c.logout()
    assert imap4d.kill_sessions() >= 1  # b's
    assert not _alive(cb)
    assert imap4d.session_pids() == []
    for dead in (ca1, ca2, cb):
        try:
            dead.shutdown()
        except (IMAPClientError, OSError):
            pass


def test_kill_during_append_leaves_a_stale_dotlock(imap4d):
    """imap4d holds FOLDER.lock (dotlock, empty file) only while it writes the mbox.  A session
    SIGKILLed then leaves the lock and a half-written message: SELECT and APPEND of that folder
    then wait ~9 s (default retries) and fail; STATUS still works."""
    big = b"From: a@example.com\r\nSubject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * 3000  # 3 MB
    for _attempt in range(3):  # a loaded machine may let the write end before the kill: again
        acc = imap4d.new_user()
        rig.create_folder(acc, ["L"])
        lock = imap4d.mailbox_path(acc, ["L"]).with_name("L.lock")
        raw = Raw(imap4d.port)
        try:
            raw.login(acc)
            raw.send(f"r9 APPEND L {{{len(big)}+}}\r\n".encode() + big + b"\r\n")  # LITERAL+
            deadline = time.monotonic() + 60
            while not lock.exists() and time.monotonic() < deadline:
                time.sleep(0.001)
            assert lock.exists()  # imap4d parses for seconds first, then locks and writes
            imap4d.kill_sessions(acc.user, signal.SIGSTOP)  # frozen mid-write, then killed
            assert imap4d.kill_sessions(acc.user) == 1
        finally:
            raw.close()
        if lock.exists():
            break
    assert lock.exists() and lock.read_bytes() == b""
    c = rig.connect(acc)
    try:
        assert c.folder_status("L", ["MESSAGES"])[b"MESSAGES"] == 1
        t = time.monotonic()
        with pytest.raises(IMAPClientError, match="Conflict with previous locker"):
            c.select_folder("L")
        assert 5 < time.monotonic() - t < 30
    finally:
        c.logout()
    os.unlink(lock)
    c = rig.connect(acc)
    try:  # usable again; the killed APPEND left its message behind, cut short or (if the write
        # ended just before the kill) whole, with the header fields imap4d adds
        assert c.select_folder("L")[b"EXISTS"] == 1
        size = c.fetch(c.search("ALL"), ["RFC822.SIZE"])
        assert 0 < list(size.values())[0][b"RFC822.SIZE"] <= len(big) + 200  # + the X-UID, Status... it adds
    finally:
        c.logout()


def test_many_concurrent_connections(imap4d):
    acc = imap4d.new_user()
    clients = []
    lock = threading.Lock()

    def one():
        c = rig.connect(acc)
        with lock:
            clients.append(c)

    threads = [threading.Thread(target=one) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert len(clients) == 12
        assert len(imap4d.session_pids(acc.user)) == 12
        assert all(_alive(c) for c in clients)
    finally:
        for c in clients:
            c.logout()


def test_restart_keeps_accounts_and_mail(imap4d):
    acc = imap4d.new_user()
    rig.create_folder(acc, ["Keep"])
    c = rig.connect(acc)
    c.append("Keep", _message(1), flags=("\\Seen",), msg_time=dt(0, tz_hours=0))
    c.logout()
    before = rig.snapshot(acc)
    port = imap4d.port
    imap4d.restart()
    assert imap4d.port == port
    assert rig.snapshot(acc) == before


# migrator against imap4d, as source and destination: tests/conformance/ (the same scenarios on
# every server pair); the login through AUTHENTICATE PLAIN's bare-LF answer: tests/unit/test_auth_fallback.py.


def test_a_message_imap4d_answers_trycreate_for_is_refused_alone(imap4d, new_account, tmp_path):
    """imap4d answers NO [TRYCREATE] (RFC 3501: the folder does not exist) to a message it cannot
    parse, here one with a header line that is not a field (17 of the corpus). The folder does
    exist (INBOX always; the other is the one selected): the message is reported as refused and
    the rest of each folder is copied, instead of the folder being given up."""
    src = new_account("slash")
    bad = b"From: a@example.com\r\nnot a field\r\nSubject: bad\r\n\r\nbody\r\n"
    rig.seed(src, ["INBOX"],
             [(simple_message(1), (), dt(1)), (bad, (), dt(2)), (simple_message(3), ("\\Seen",), dt(3))])
    rig.seed(src, ["Box"], [(simple_message(4), (), dt(4)), (bad, (), dt(5))])
    dst = imap4d.new_user()
    res, report = migrate(src, dst, tmp_path)
    assert res.code == 1 and not report["folder_errors"], res.text
    refused = sorted((f["folder"], f["uid"]) for f in report["failures"] if f["reason"].startswith("rejected"))
    assert refused == [("Box", 2), ("INBOX", 2)], report["failures"]
    held = {folder: [body.split(b"\r\n\r\n")[1] for body in rig.fetch_bodies(dst, [folder])]
            for folder in ("INBOX", "Box")}
    assert held == {"INBOX": [b"hello 1\r\n", b"hello 3\r\n"], "Box": [b"hello 4\r\n"]}
