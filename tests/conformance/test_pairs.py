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

import signal

import pytest

from tests import rig
from tests.conformance.content import LARGE_FOLDER
from tests.conformance.outcome import assert_kept, display, settle
from tests.helpers import migrate, migrator

pytestmark = pytest.mark.e2e

KINDS = ["dovecot", "cyrus", "courier", "imap4d"]
# All pairs of one source kind run on one pytest-xdist worker (--dist loadgroup): each source is
# seeded once (seeding one message at a time is most of the suite's time on Courier and imap4d).
PAIRS = [pytest.param(s, d, marks=pytest.mark.xdist_group(f"conformance-{s}"), id=f"{s}-to-{d}")
         for s in KINDS for d in KINDS]


def count(listing: dict) -> int:
    return sum(len(v) for v in listing.values())


def _ends(src_kind, dst_kind, sources, servers, prefix: str, large: bool = True):
    """The seeded source, what it holds (as the pair is to copy it), a fresh destination user, and
    the options that leave the large messages out when GNU imap4d is an end or large is False."""
    src, before, _notes = sources(src_kind)
    dst = servers(dst_kind).new_user(prefix)
    if "imap4d" in (src_kind, dst_kind) or not large:
        return src, {f: m for f, m in before.items() if f != LARGE_FOLDER}, dst, ["--exclude", display(LARGE_FOLDER)]
    return src, before, dst, []


def _altered(report: dict) -> set:
    return {(f["folder"], f["uid"]) for f in report["failures"] if "changed the message" in f["reason"]}


@pytest.mark.parametrize("src_kind,dst_kind", PAIRS)
def test_copy_rerun_reset_and_verify(src_kind, dst_kind, sources, servers, tmp_path):
    src, before, dst, only = _ends(src_kind, dst_kind, sources, servers, "cdst")

    res, report = migrate(src, dst, tmp_path, "--workers", "4", *only)
    after = rig.messages_by_uid(dst)
    outcome = settle(before, after, report)
    assert_kept(outcome, report, res.code)

    # A rerun copies nothing and adds nothing (flags are brought in step: a server may rewrite a
    # message's bytes when they change, as imap4d does, so the count is what is compared).
    res, again = migrate(src, dst, tmp_path, *only, report="rerun.json")
    assert again["totals"]["copied"] == 0, again["totals"]
    now = rig.messages_by_uid(dst)
    assert count(now) == count(after)
    assert_kept(settle(before, now, again), again, res.code)

    # The state started over: identical copies are found by content, altered ones by their loose
    # form (content.loose_form). Only an altered copy a server rewrote beyond what that form undoes
    # (README: Courier's cut-short messages, imap4d's header rewrites) may be appended again, and
    # then only one the first run reported as altered and this run reports again.
    res, fresh = migrate(src, dst, tmp_path, "--reset-state", *only, report="fresh.json")
    assert fresh["totals"]["copied"] == 0, (fresh["totals"], fresh["failures"][:5])
    again_altered = _altered(report) & _altered(fresh)
    assert count(now) <= count(rig.messages_by_uid(dst)) <= count(now) + len(again_altered)

    verified = migrator("verify", src.url, dst.url, *only, src=src, dst=dst)
    assert verified.code == (1 if outcome.reported else 0), verified.text[-2000:]


@pytest.mark.parametrize("src_kind,dst_kind", PAIRS)
def test_kill_9_with_appends_unconfirmed_then_rerun(src_kind, dst_kind, sources, servers, tmp_path):
    src, before, dst, only = _ends(src_kind, dst_kind, sources, servers, "ckill", large=False)
    res, _ = migrate(src, dst, tmp_path, "--batch-mb", "0.5", *only, env={"MIGRATOR_TEST_CRASH_AT": "append-sent:3"})
    assert res.code == -signal.SIGKILL, res.text[-2000:]
    res, report = migrate(src, dst, tmp_path, "--batch-mb", "0.5", *only, report="resumed.json")
    assert_kept(settle(before, rig.messages_by_uid(dst), report), report, res.code)
