"""One conformance suite: the same scenarios on every pair of servers, both directions.

Each source (tests/conformance/content.py: the real-world corpus, flags and keywords, INTERNALDATEs
in several zones, twins, a nested folder) is copied to a fresh user of each destination kind.
Every scenario ends with the same check (outcome.py): each source message is on the destination
identical, or the report names it with a reason; nothing is there twice; the exit code says which.

Scenarios per pair: the first run; a rerun (copies nothing, adds nothing); a rerun with the state
started over (--reset-state: reconciled by content, adds nothing); verify (identical exactly when
nothing was reported); kill -9 with APPENDs sent but not confirmed, then a rerun.
"""
from __future__ import annotations

import re
import signal

import pytest

from tests import rig
from tests.conformance.outcome import assert_kept, settle
from tests.helpers import migrate, migrator

pytestmark = pytest.mark.e2e

KINDS = ["dovecot", "cyrus", "courier", "imap4d"]
PAIRS = [(s, d) for s in KINDS for d in KINDS]


def _served_cut_short(reason: str) -> bool:
    m = re.search(r"\((\d+) bytes sent, (\d+) stored\)", reason)
    return m is not None and int(m.group(2)) < int(m.group(1)) // 2


def count(listing: dict) -> int:
    return sum(len(v) for v in listing.values())


def _pair_id(pair):
    return f"{pair[0]}-to-{pair[1]}"


@pytest.mark.parametrize("src_kind,dst_kind", PAIRS, ids=[_pair_id(p) for p in PAIRS])
def test_copy_rerun_reset_and_verify(src_kind, dst_kind, sources, servers, tmp_path):
    src, before, _notes = sources(src_kind)
    dst = servers(dst_kind).new_user("cdst")

    res, report = migrate(src, dst, tmp_path, "--workers", "4")
    after = rig.messages_by_uid(dst)
    outcome = settle(before, after, report)
    assert_kept(outcome, report, res.code)

    res, again = migrate(src, dst, tmp_path, report="rerun.json")
    assert again["totals"]["copied"] == 0, again["totals"]
    assert rig.messages_by_uid(dst) == after
    assert_kept(settle(before, after, again), again, res.code)

    res, fresh = migrate(src, dst, tmp_path, "--reset-state", report="fresh.json")
    assert fresh["totals"]["copied"] == 0, (fresh["totals"], fresh["failures"][:5])
    # Known limit (README, server behaviour): Courier serves a message of more than 299 MIME parts
    # cut short, far below the loose form's size window; without the state such a copy is not
    # recognised, and is appended (and reported) again.
    cut_short = sum(1 for f in report["failures"] if _served_cut_short(f["reason"]))
    assert count(after) <= count(rig.messages_by_uid(dst)) <= count(after) + cut_short

    verified = migrator("verify", src.url, dst.url, src=src, dst=dst)
    assert verified.code == (1 if outcome.reported else 0), verified.text[-2000:]


@pytest.mark.parametrize("src_kind,dst_kind", PAIRS, ids=[_pair_id(p) for p in PAIRS])
def test_kill_9_with_appends_unconfirmed_then_rerun(src_kind, dst_kind, sources, servers, tmp_path):
    src, before, _notes = sources(src_kind)
    dst = servers(dst_kind).new_user("ckill")
    res, _ = migrate(src, dst, tmp_path, "--batch-mb", "0.5", env={"MIGRATOR_TEST_CRASH_AT": "append-sent:3"})
    assert res.code == -signal.SIGKILL, res.text[-2000:]
    res, report = migrate(src, dst, tmp_path, "--batch-mb", "0.5", report="resumed.json")
    assert_kept(settle(before, rig.messages_by_uid(dst), report), report, res.code)
