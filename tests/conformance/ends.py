"""The ends a conformance scenario runs between: an IMAP server's account, a local archive
(archive:///path), a POP3 mailbox (Dovecot's pop3d). Each gives migrator its URL and password
(the shape of rig.Account that tests.helpers.migrate/migrator use) and gives the check what it
holds, in one form, outcome.Listing: {folder components: {uid: (body_sha, flags, INTERNALDATE as
a UTC instant)}}, as rig.messages_by_uid reads an IMAP account."""
from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path

from imapclient.datetime_util import parse_to_datetime

from migrator.stores.archive import ArchiveStore
from migrator.stores.pop3 import _headers, _Pop3, date_from_headers, uid_from_uidl
from tests import rig
from tests.conformance.outcome import Listing

IMAP_KINDS = ["dovecot", "cyrus", "courier", "imap4d"]


@dataclass
class End:
    kind: str  # an IMAP server kind, "archive" or "pop3"
    url: str
    account: rig.Account | None = None  # whose password migrator is given; None: an archive
    path: Path | None = None  # an archive's directory

    @classmethod
    def imap(cls, account: rig.Account) -> End:
        return cls(account.kind, account.url, account)

    @classmethod
    def archive(cls, path: Path) -> End:
        return cls("archive", f"archive://{path}", path=path)

    @classmethod
    def pop3(cls, account: rig.Account) -> End:
        return cls("pop3", account.pop3_url, account)

    def env(self, role: str) -> dict:
        return self.account.env(role) if self.account is not None else {}

    def listing(self) -> Listing:
        if self.kind == "archive":
            return archive_messages(self.path)
        if self.kind == "pop3":
            return pop3_messages(self.account)
        sessions_ended(self.account)
        return rig.messages_by_uid(self.account)


def sessions_ended(account: rig.Account, timeout: float = 30.0) -> None:
    """Wait until the server has ended the account's sessions. migrator closes a connection
    without waiting for the server's BYE (stores/imap.py, close), so a session may still be ending
    when the process exits; GNU imap4d rewrites the mbox as a read-write session leaves it, and an
    EXAMINE meanwhile is answered NO "Could not open ...: No such file or directory"."""
    deadline = time.monotonic() + timeout
    while account.server.session_pids(account.user) and time.monotonic() < deadline:
        time.sleep(0.05)


def utc_instant(imap_date: str) -> str | None:
    """An IMAP date-time string as messages_by_uid gives INTERNALDATE; None for no date."""
    if not imap_date:
        return None
    return parse_to_datetime(imap_date.encode("ascii"), normalise=False).astimezone(UTC).isoformat()


def archive_messages(path: Path) -> Listing:
    """What an archive holds, read through migrator's own ArchiveStore opened read-only (no
    migrator process may hold it meanwhile: an archive is locked by its user). {} if there is none."""
    if not (path / "archive.json").exists():
        return {}
    arc = ArchiveStore(str(path), create=False, readonly=True)
    try:
        out: Listing = {}
        for folder in arc.list_folders():
            arc.select(folder.name)
            uids = [m.uid for m in arc.list_messages()]
            out[folder.name] = {
                msg.meta.uid: (rig.body_sha(msg.body),
                               tuple(sorted(f for f in msg.meta.flags if f.lower() != "\\recent")),
                               utc_instant(msg.meta.internaldate))
                for msg in arc.fetch(uids)}
        return out
    finally:
        arc.close()


def pop3_messages(account: rig.Account) -> Listing:
    """What a POP3 mailbox gives a copy, and so all that a copy from it can be held to. This is
    the one place where the check is adapted to POP3 (the IMAP ends are held to everything):
    - one folder, INBOX; the UID is the one migrator makes of UIDL (stores/pop3.py), so the
      report's (folder, UID) names the same message;
    - the bytes RETR serves (Dovecot adds CRLF to a message without a final newline);
    - no flags: POP3 has none, so a copy has none;
    - INTERNALDATE: the date migrator takes from the served headers (newest Received:, else Date:;
      tests/e2e/test_pop3.py pins that rule), None where they give none: the destination then
      dates the copy itself, and only the bytes and flags of such a copy are compared (settle).
    Dovecot marks what POP3 serves \\Seen on its IMAP side: a POP3 source account is for POP3 only."""
    conn = _Pop3(account.host, account.pop3_port, timeout=60)
    try:
        conn.user(account.user)
        conn.pass_(account.password)
        _resp, lines, _ = conn.uidl()
        inbox = {}
        for line in lines:
            num, uidl = line.split(None, 1)
            body = conn.retr_bytes(int(num))
            date = utc_instant(date_from_headers(_headers(body)))
            inbox[uid_from_uidl(uidl.strip())] = (rig.body_sha(body), (), date)
        return {("INBOX",): inbox}
    finally:
        conn.quit()
