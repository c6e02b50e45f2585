"""Checkpoint store, march decisions, the adoption pool and error classification: no server needed."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

import pytest

from migrator.checkpoint import DONE, FAILED, PENDING, Checkpoint, Intent, Watermark
from migrator.engine.jobs import EngineOptions
from migrator.engine.march import Pool, Wanted, decide, pool_candidates
from migrator.errors import StateError
from migrator.stores.base import Capabilities, Message, MessageMeta
from migrator.stores.imap_parse import FOLDER, MESSAGE, TRANSIENT, classify

INBOX = ("INBOX",)
DATE = "14-Mar-2019 15:09:26 +0000"


def meta(uid, size=100, flags=(), date=DATE):
    return MessageMeta(uid, size, tuple(sorted(flags)), date)


# -- checkpoint file ---------------------------------------------------------------------------


def test_intent_then_confirm_round_trip(tmp_path):
    path = str(tmp_path / "s.sqlite")
    ck = Checkpoint(path)
    ck.record_intents(INBOX, 7, INBOX, 9, [Intent(1, 10, "aa", ("\\Seen",)), Intent(2, 20, "bb", ())])
    rows = ck.rows(INBOX, 7, INBOX)
    assert {r.status for r in rows.values()} == {PENDING} and rows[1].dst_uid is None
    ck.record_done(INBOX, 7, INBOX, 9, [(Intent(1, 10, "aa", ("\\Seen",)), 41)])
    ck.record_failed(INBOX, 7, INBOX, 9, Intent(2, 20, "bb", ()), "rejected: [OVERQUOTA]")
    ck.close()
    ck = Checkpoint(path)  # survives a reopen
    rows = ck.rows(INBOX, 7, INBOX)
    assert (rows[1].status, rows[1].dst_uid, rows[1].flags) == (DONE, 41, ("\\Seen",))
    assert rows[2].status == FAILED and "OVERQUOTA" in rows[2].reason
    assert ck.rows(INBOX, 8, INBOX) == {}  # another UIDVALIDITY: nothing known
    assert ck.failed() == [(INBOX, 2, "rejected: [OVERQUOTA]")]
    ck.close()
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"


VERSION_1_MESSAGES = """CREATE TABLE messages (src_folder TEXT NOT NULL, src_uidvalidity INTEGER NOT NULL,
    src_uid INTEGER NOT NULL, dst_folder TEXT NOT NULL, dst_uidvalidity INTEGER NOT NULL, dst_uid INTEGER,
    size INTEGER NOT NULL, sha256 TEXT NOT NULL, flags TEXT NOT NULL, status TEXT NOT NULL, reason TEXT,
    updated REAL NOT NULL, PRIMARY KEY (src_folder, src_uidvalidity, src_uid, dst_folder))"""


def test_a_version_1_state_file_is_upgraded_in_place_and_keeps_its_rows(tmp_path):
    """Version 2 keeps the date each copy was sent with; a version 1 file's rows have none ('')."""
    path = str(tmp_path / "s.sqlite")
    db = sqlite3.connect(path)
    db.executescript(f"""{VERSION_1_MESSAGES};
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('format', 'migrator-state'), ('version', '1');
        INSERT INTO messages VALUES ('["INBOX"]', 7, 1, '["INBOX"]', 9, 41, 10, 'aa', '["\\\\Seen"]', 'done',
                                     NULL, 0);""")
    db.commit()
    db.close()
    ck = Checkpoint(path)
    assert ck.rows(INBOX, 7, INBOX)[1].date == "" and ck.rows(INBOX, 7, INBOX)[1].dst_uid == 41
    ck.record_done(INBOX, 7, INBOX, 9, [(Intent(2, 20, "bb", (), DATE), 42)])
    assert ck.rows(INBOX, 7, INBOX)[2].date == DATE
    ck.close()
    assert dict(sqlite3.connect(path).execute("SELECT key, value FROM meta"))["version"] == "2"


def test_has_rows_and_copied_into_answer_without_reading_rows(tmp_path):
    ck = Checkpoint(str(tmp_path / "s.sqlite"))
    ck.record_intents(INBOX, 7, ("Box",), 9, [Intent(1, 10, "aa", ())])
    assert ck.has_rows(INBOX, 7, ("Box",)) and ck.rows(INBOX, 7, ("Box",))
    assert not ck.has_rows(INBOX, 8, ("Box",)) and not ck.has_rows(INBOX, 7, INBOX)
    assert ck.copied_into([("Box",), INBOX, ("Other",)]) == {("Box",)}
    ck.close()


def test_watermark_round_trip_and_drop(tmp_path):
    ck = Checkpoint(str(tmp_path / "s.sqlite"))
    wm = Watermark(EngineOptions().key(), 1, 5, 4, 10, 2, 7, 4, 12, settled=4, skipped_deleted=0)
    assert ck.watermark(INBOX, INBOX) is None
    ck.set_watermark(INBOX, INBOX, wm)
    assert ck.watermark(INBOX, INBOX) == wm
    ck.set_watermark(INBOX, INBOX, None)
    assert ck.watermark(INBOX, INBOX) is None
    ck.close()


@pytest.mark.parametrize("content", [b"not a database at all" * 50, b""])
def test_garbage_state_file_is_refused_with_the_way_out(tmp_path, content):
    path = tmp_path / "s.sqlite"
    path.write_bytes(content)
    if not content:  # an empty file is a state that was never written: it is simply started
        Checkpoint(str(path)).close()
        return
    with pytest.raises(StateError) as e:
        Checkpoint(str(path))
    assert "not a migrator state file" in str(e.value) and "--reset-state" in e.value.hint
    assert path.read_bytes() == content  # left untouched


def test_foreign_sqlite_database_is_refused_untouched(tmp_path):
    path = tmp_path / "other.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE t (x)")
    db.commit()
    db.close()
    before = path.read_bytes()
    with pytest.raises(StateError, match="not a migrator state file"):
        Checkpoint(str(path))
    assert path.read_bytes() == before  # not even switched to WAL


def test_state_of_another_account_pair_is_refused(tmp_path):
    path = str(tmp_path / "s.sqlite")
    ck = Checkpoint(path)
    ck.bind("a@one", "b@two")
    ck.close()
    ck = Checkpoint(path)
    ck.bind("a@one", "b@two")
    with pytest.raises(StateError, match="belongs to another migration") as e:
        ck.bind("a@one", "c@three")
    assert "--reset-state" in e.value.hint
    ck.close()


def test_second_process_is_locked_out(tmp_path):
    path = str(tmp_path / "s.sqlite")
    ck = Checkpoint(path)
    code = (
        "import sys\nfrom migrator.checkpoint import Checkpoint\nfrom migrator.errors import StateError\n"
        f"try:\n    Checkpoint({path!r})\nexcept StateError as e:\n    print(e); sys.exit(7)\n"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    ck.close()
    assert other.returncode == 7 and "in use by another migrator process" in other.stdout
    again = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stdout + again.stderr  # free once the first one is closed


# -- march decisions -----------------------------------------------------------------------------


def _row_done(uid, dst_uid, dst_uidvalidity=9, status=DONE, flags=(), sha="x"):
    from migrator.checkpoint import Row

    return Row(uid, dst_uidvalidity, dst_uid, 100, sha, flags, status, "why" if status == FAILED else None)


def _decide(src, dst, rows, validity=9, **kw):
    opts = dict(include_deleted=False, sync_flags=True, retry_failed=False)
    opts.update(kw)
    return decide(src, dst, rows, validity, **opts)


def test_decide_settled_copied_and_unaccounted():
    src = [meta(1, flags=["\\Seen"]), meta(2), meta(3), meta(4, flags=["\\Deleted"])]
    dst = [meta(10), meta(11), meta(12)]
    rows = {1: _row_done(1, 10), 2: _row_done(2, 99)}  # 2's copy was removed from the destination
    d = _decide(src, dst, rows)
    assert [m.uid for m in d.to_copy] == [2, 3]
    assert d.already == 1 and d.deleted_skipped == 1
    assert [(s.uid, t.uid) for s, t in d.flag_updates] == [(1, 10)]  # \Seen set on the source since
    assert [m.uid for m in d.unaccounted] == [11, 12]
    assert not _decide(src, dst, rows, sync_flags=False).flag_updates


def test_decide_ignores_rows_of_another_destination_uidvalidity():
    d = _decide([meta(1)], [meta(10)], {1: _row_done(1, 10, dst_uidvalidity=8)})
    assert [m.uid for m in d.to_copy] == [1] and [m.uid for m in d.unaccounted] == [10]


def test_decide_failed_rows_wait_for_retry_failed():
    rows = {1: _row_done(1, None, status=FAILED)}
    assert _decide([meta(1)], [], rows).failed_earlier == [(1, "why")]
    assert [m.uid for m in _decide([meta(1)], [], rows, retry_failed=True).to_copy] == [1]


def test_decide_pending_intent_is_copied_again_unless_found_in_the_pool():
    rows = {1: _row_done(1, None, status=PENDING)}
    d = _decide([meta(1)], [meta(10)], rows)
    assert [m.uid for m in d.to_copy] == [1] and [m.uid for m in d.unaccounted] == [10]


def test_decide_done_without_uid_becomes_a_claim():
    d = _decide([meta(1)], [meta(10)], {1: _row_done(1, None)})
    assert d.already == 1 and [r.src_uid for r in d.claims] == [1] and not d.to_copy


def test_pool_candidates_only_same_sizes():
    cands, rest = pool_candidates([meta(1, 10), meta(2, 20), meta(3, 30)], {20, 30})
    assert [m.uid for m in cands] == [2, 3] and [m.uid for m in rest] == [1]


class _Listed:
    """A store serving bodies by UID and counting what fetch() reads; its listing may give other
    sizes than its bytes (exact_sizes=False, like POP3's LIST)."""

    def __init__(self, bodies: dict[int, bytes], exact: bool = True, dates: dict[int, str] | None = None):
        self.bodies, self.dates, self.read = bodies, dates or {}, []
        self.capabilities = Capabilities(exact_sizes=exact)

    def fetch(self, uids):
        for uid in uids:
            self.read.append(uid)
            yield Message(MessageMeta(uid, len(self.bodies[uid]), (), self.dates.get(uid, "")), self.bodies[uid])


def _pair(src_listing, src, dst_listing, dst):
    from migrator.accounts import parse_endpoint
    from migrator.engine.copy import Engine
    from migrator.engine.jobs import FolderRun
    from migrator.plan import FolderPlan, Plan

    plan = Plan(parse_endpoint("imap://a@example.org"), parse_endpoint("imap://b@example.org"),
                [FolderPlan(INBOX, INBOX)])
    engine = Engine(plan, connect_src=None, connect_dst=None, checkpoint=None, opts=EngineOptions())
    run = FolderRun(plan.folders[0], 1)
    dec = _decide(src_listing, dst_listing, {})
    pairs = engine.sync.matcher.pair_with_pool(run, src, dst, dec, src_listing)
    return {uid: found.uid for uid, (found, _digest) in pairs.items()}, run, dec


def test_pairing_reads_only_same_sizes_and_nothing_into_an_empty_destination():
    src = _Listed({1: b"a" * 10, 2: b"b" * 20})
    dst = _Listed({7: b"b" * 20, 8: b"c" * 30})
    pairs, run, _dec = _pair([meta(1, 10), meta(2, 20)], src, [meta(7, 20), meta(8, 30)], dst)
    assert pairs == {2: 7} and src.read == [2] and dst.read == [7] and run.extras == [8]
    empty = _Listed({})
    assert _pair([meta(1, 10), meta(2, 20)], src, [], empty)[0] == {} and empty.read == [] and src.read == [2]


def test_pairing_a_source_without_exact_sizes_reads_its_bytes_first():
    """POP3: a listed size says nothing about the bytes (Dovecot adds a final CRLF), so the messages
    to copy are fetched first and only destination messages of their bytes' sizes are read; the
    date the listing leaves out comes from the fetched message. An empty destination, or nothing
    to copy, reads nothing. The messages to copy go on with their sizes as served."""
    date = "01-Jan-2020 00:00:00 +0000"
    src = _Listed({1: b"x" * 12, 2: b"y" * 22}, exact=False, dates={1: date, 2: date})
    listing = [meta(1, 10, date=""), meta(2, 20, date="")]  # LIST: 2 octets short
    dst = _Listed({5: b"x" * 12, 6: b"z" * 12, 7: b"y" * 20, 8: b"x" * 12})
    dst_listing = [meta(5, 12, date="02-Feb-2021 00:00:00 +0000"), meta(6, 12), meta(7, 20), meta(8, 12, date=date)]
    pairs, run, dec = _pair(listing, src, dst_listing, dst)
    assert pairs == {1: 8}  # the twin of its date, though 5 has the lower UID
    assert [(m.uid, m.size, m.internaldate) for m in dec.to_copy] == [(1, 12, date), (2, 22, date)]
    assert src.read == [1, 2] and sorted(dst.read) == [5, 6, 8] and run.extras == [7]
    src.read = []
    empty = _Listed({})
    assert _pair(listing, src, [], empty)[0] == {} and empty.read == [] and src.read == []
    assert _pair([], src, dst_listing, dst)[0] == {} and src.read == [] and sorted(dst.read) == [5, 6, 8]


def test_pool_is_a_multiset_preferring_same_date_and_flags():
    pool = Pool()
    pool.add("h", meta(5, date="01-Jan-2020 00:00:00 +0000"))
    pool.add("h", meta(3, flags=["\\Seen"]))
    pool.add("h", meta(4))
    assert pool.might_hold(100) and not pool.might_hold(99)
    assert pool.pair([Wanted(meta(8), "other")]) == {}
    pairs = pool.pair([Wanted(meta(9), "h"), Wanted(meta(2, flags=["\\Seen"]), "h"), Wanted(meta(1), "h")])
    assert {s: d.uid for s, d in pairs.items()} == {1: 4, 2: 3, 9: 5}  # same date and flags first; 9 takes what is left
    assert pool.pair([Wanted(meta(7), "h")]) == {}  # each destination message adopted once
    assert len(pool) == 0 and pool.leftovers() == [] and not pool.might_hold(100)


# -- error classes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text, kind", [
    ("NO [OVERQUOTA] Quota exceeded (mailbox for user is full)", MESSAGE),
    ("NO [PARSE] Invalid message", MESSAGE),
    ("NO [TOOBIG] Message too large", MESSAGE),
    ("NO Message too big", MESSAGE),
    ("NO [UNAVAILABLE] Temporary failure", TRANSIENT),
    ("NO [THROTTLED] slow down", TRANSIENT),
    ("NO [LIMIT] Too many commands", TRANSIENT),
    ("NO [SERVERBUG] Internal error occurred", TRANSIENT),
    ("NO [TRYCREATE] Mailbox doesn't exist: X", FOLDER),
])
def test_classify_server_answers(text, kind):
    assert classify(text) == kind


def test_crash_point_kills_the_process_at_the_nth_pass():
    code = "from migrator.engine.crashpoints import crash\nfor i in range(5):\n    crash('x'); print(i, flush=True)\n"
    env = {**os.environ, "MIGRATOR_TEST_CRASH_AT": "x:3"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == -9 and res.stdout.split() == ["0", "1"]
    env.pop("MIGRATOR_TEST_CRASH_AT")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0 and len(res.stdout.split()) == 5
