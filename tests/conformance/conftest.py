"""The conformance suite's ends: every server kind the rig can start (tests/conftest.py: servers),
a local archive and a POP3 mailbox, each seeded once as a source (ends.py: what each gives
migrator and the check).

A source is seeded once per worker and kind and only read afterwards; every test writes into
destination users (or an archive) of its own.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from tests import rig
from tests.conformance.content import pop3_inbox, seed_source
from tests.conformance.ends import End
from tests.helpers import migrate


@pytest.fixture(scope="session")
def sources(servers, rig_root):
    """sources(kind) -> (End, what it holds as an outcome.Listing, seeding notes). kind: a server
    kind, "archive" or "pop3"."""
    seeded: dict = {}

    def get(kind: str):
        if kind not in seeded:
            seeded[kind] = seed(kind)
        return seeded[kind]

    def seed(kind: str):
        if kind == "archive":
            end, notes = backup_of(*get("dovecot")[:2], Path(rig_root) / "conf-archive-src")
        elif kind == "pop3":
            account = servers("dovecot").new_user("cpop")
            rig.seed(account, ["INBOX"], pop3_inbox())
            end, notes = End.pop3(account), {}
        else:
            account = servers(kind).new_user("csrc")
            end, notes = End.imap(account), seed_source(account, large=kind != "imap4d", keywords=kind != "imap4d")
        return end, end.listing(), notes

    return get


@pytest.fixture
def destinations(servers, tmp_path):
    """destinations(kind, prefix) -> a fresh, empty End of that kind (a server's new user, or an
    archive under the test's tmp_path that the first run creates)."""
    def make(kind: str, prefix: str) -> End:
        if kind == "archive":
            return End.archive(tmp_path / f"{prefix}.archive")
        return End.imap(servers(kind).new_user(prefix))

    return make


def backup_of(dovecot: End, holds: dict, path: Path) -> tuple[End, dict]:
    """The archive source: migrator's backup of the Dovecot source (an archive holds what a server
    served, with CRLF line ends and the NUL octets Dovecot serves as 0x80 restored). It then holds
    what it holds: its own listing is the source the restores are held to."""
    path.mkdir(parents=True, exist_ok=True)
    archive = End.archive(path / "source.archive")
    res, report = migrate(dovecot, archive, path)
    assert res.code in (0, 1) and report, res.text[-2000:]
    return archive, {"backed_up": report["totals"]["copied"], "of": sum(len(m) for m in holds.values())}
