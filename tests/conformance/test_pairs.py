"""One conformance suite: the same scenarios on every pair of ends, both directions.

The ends (ends.py) are the four IMAP servers, a local archive (archive:///path: backup from each
server, restore to each) and a POP3 mailbox (Dovecot's pop3d: a source only, INBOX bytes only).
Each source (tests/conformance/content.py: the real-world corpus, flags and keywords,
INTERNALDATEs in several zones, twins, a nested folder) is copied to a fresh destination of each
kind. Every scenario ends with the same check (outcome.py): each source message is on the
destination identical, or the report names it with a reason; nothing is there twice; the exit
code says which.

Scenarios per pair: the first run; a rerun (copies nothing, adds nothing); a rerun with the state
started over (--reset-state: reconciled by content, adds nothing); verify (identical exactly when
nothing was reported); kill -9 with APPENDs sent but not confirmed (an archive: frames written and
its index committed, the checkpoint not told), then a rerun.
"""
from __future__ import annotations

import signal

import pytest

from tests.conformance.content import LARGE_FOLDER
from tests.conformance.ends import IMAP_KINDS
from tests.conformance.outcome import assert_kept, display, settle
from tests.helpers import migrate, migrator

pytestmark = pytest.mark.e2e


def pair(src: str, dst: str, *marks):
    return pytest.param(src, dst, marks=[pytest.mark.xdist_group(f"conformance-{src}"), *marks], id=f"{src}-to-{dst}")


# Dovecot's Maildir keeps INTERNALDATE as the file's mtime: a date before 1970 is stored as one in
# 2105, and migrator reports it (README, Limits). Only the POP3 source has such dates (two
# corpus messages dated 13-Feb-1969 by their Date: header); an IMAP source's are set by content.py.
# All pairs of one source run on one pytest-xdist worker (--dist loadgroup): each source is seeded
# once (seeding one message at a time is most of the suite's time on Courier and imap4d). The
# archive source is a backup of the Dovecot source (conftest.backup_of).
PAIRS = ([pair(s, d) for s in IMAP_KINDS for d in [*IMAP_KINDS, "archive"]]
         + [pair("archive", d) for d in IMAP_KINDS]
         + [pair("pop3", d) for d in [*IMAP_KINDS, "archive"]])
# A restore is not killed midway: what a kill tests (APPENDs the checkpoint was not told of, settled
# by the next run) is the destination's side, which the other sources cover for every server kind.
KILLED = [p for p in PAIRS if p.values[0] != "archive"]


def count(listing: dict) -> int:
    return sum(len(v) for v in listing.values())


def _ends(src_kind, dst_kind, sources, destinations, prefix: str, large: bool = True):
    """The seeded source, what it holds (as the pair is to copy it), a fresh destination, and
    the options that leave the large messages out when GNU imap4d is an end or large is False
    (the POP3 source has none)."""
    src, before, _notes = sources(src_kind)
    dst = destinations(dst_kind, prefix)
    if "imap4d" in (src_kind, dst_kind) or not large:
        return src, {f: m for f, m in before.items() if f != LARGE_FOLDER}, dst, ["--exclude", display(LARGE_FOLDER)]
    return src, before, dst, []


def _altered(report: dict) -> set:
    return {(f["folder"], f["uid"]) for f in report["failures"] if "changed the message" in f["reason"]}


@pytest.mark.parametrize("src_kind,dst_kind", PAIRS)
def test_copy_rerun_reset_and_verify(src_kind, dst_kind, sources, destinations, tmp_path):
    src, before, dst, only = _ends(src_kind, dst_kind, sources, destinations, "cdst")

    res, report = migrate(src, dst, tmp_path, "--workers", "4", *only)
    after = dst.listing()
    outcome = settle(before, after, report)
    assert_kept(outcome, report, res.code)

    # A rerun copies nothing and adds nothing (flags are brought in step: a server may rewrite a
    # message's bytes when they change, as imap4d does, so the count is what is compared).
    res, again = migrate(src, dst, tmp_path, *only, report="rerun.json")
    assert again["totals"]["copied"] == 0, again["totals"]
    now = dst.listing()
    assert count(now) == count(after)
    assert_kept(settle(before, now, again), again, res.code)

    # The state started over: identical copies are found by content, altered ones by their loose
    # form (content.loose_form). Only an altered copy a server rewrote beyond what that form undoes
    # (README: Courier's cut-short messages, imap4d's header rewrites) may be appended again, and
    # then only one the first run reported as altered and this run reports again.
    res, fresh = migrate(src, dst, tmp_path, "--reset-state", *only, report="fresh.json")
    assert fresh["totals"]["copied"] == 0, (fresh["totals"], fresh["failures"][:5])
    again_altered = _altered(report) & _altered(fresh)
    assert count(now) <= count(dst.listing()) <= count(now) + len(again_altered)

    verified = migrator("verify", src.url, dst.url, *only, src=src, dst=dst)
    assert verified.code == (1 if outcome.reported else 0), verified.text[-2000:]


@pytest.mark.parametrize("src_kind,dst_kind", KILLED)
def test_kill_9_with_appends_unconfirmed_then_rerun(src_kind, dst_kind, sources, destinations, tmp_path):
    src, before, dst, only = _ends(src_kind, dst_kind, sources, destinations, "ckill", large=False)
    res, _ = migrate(src, dst, tmp_path, "--batch-mb", "0.5", *only, env={"MIGRATOR_TEST_CRASH_AT": "append-sent:3"})
    assert res.code == -signal.SIGKILL, res.text[-2000:]
    res, report = migrate(src, dst, tmp_path, "--batch-mb", "0.5", *only, report="resumed.json")
    assert_kept(settle(before, dst.listing(), report), report, res.code)
