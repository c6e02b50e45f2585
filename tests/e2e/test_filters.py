"""Filters end to end on Dovecot (issue 15): `plan --since --before --max-size` writes them into the
plan, `run PLAN` copies exactly the source messages inside the window (the ones Dovecot's own
UID SEARCH SINCE/BEFORE/NOT LARGER finds) and reports the rest as skipped by reason; a later
`migrate` without filters, with the same state file, copies the rest with no duplicates; `verify`
with the same filters compares the window only."""
from __future__ import annotations

import json
import tomllib
from datetime import date

import pytest

from tests import rig
from tests.helpers import dt, migrate, migrator, multiset, simple_message

pytestmark = pytest.mark.e2e


def test_a_filtered_plan_copies_the_window_and_an_unfiltered_rerun_the_rest(src_account, dst_account, tmp_path):
    src, dst = src_account, dst_account
    # 14..20 March 2019, one a day, 15:09 +0200 (13:09 in Dovecot's UTC); day 3 is a 4 KB message
    msgs = [(simple_message(i, body="x" * (4000 if i == 3 else 10)), ("\\Seen",), dt(i)) for i in range(7)]
    rig.seed(src, ["INBOX"], msgs)
    rig.seed(src, ["Archive"], msgs[:3])
    plan, state, report = tmp_path / "plan.toml", tmp_path / "state.sqlite", tmp_path / "run.json"
    res = migrator("plan", src.url, dst.url, "-o", str(plan), "--since", "2019-03-15", "--before", "18-Mar-2019",
                   "--max-size", "2K", src=src, dst=dst)
    assert res.code == 0, res.text
    assert "filters: --since 2019-03-15 --before 2019-03-18 --max-size 2K" in res.out
    assert tomllib.loads(plan.read_text())["filters"] == {"since": "2019-03-15", "before": "2019-03-18",
                                                          "max_size": "2K"}

    res = migrator("run", str(plan), "--state", str(state), "--report", str(report), "--quiet", src=src, dst=dst)
    assert res.code == 0, res.text
    c = rig.connect(src)
    try:
        window = {}
        for folder in ("INBOX", "Archive"):
            c.select_folder(folder, readonly=True)
            uids = c.search(["SINCE", date(2019, 3, 15), "BEFORE", date(2019, 3, 18), "NOT", "LARGER", "2048"])
            window[folder] = {rig.body_sha(d[b"BODY[]"]) for d in c.fetch(uids, ["BODY.PEEK[]"]).values()}
    finally:
        c.logout()
    assert len(window["INBOX"]) == 2 and len(window["Archive"]) == 2  # 15 and 16 March; 17 March is 4 KB
    snap = rig.snapshot(dst)
    assert {sha for sha, _f, _d in snap[("INBOX",)]} == window["INBOX"] and len(snap[("INBOX",)]) == 2
    assert {sha for sha, _f, _d in snap[("Archive",)]} == window["Archive"] and len(snap[("Archive",)]) == 2
    skipped = json.loads(report.read_text())["totals"]["skipped"]
    assert skipped == {"filtered out: received before --since 2019-03-15": 2,
                       "filtered out: larger than --max-size 2K": 1,
                       "filtered out: received on or after --before 2019-03-18": 3}

    # verify with the plan compares the window only; without filters it finds the rest missing
    res = migrator("verify", str(plan), "--json", src=src, dst=dst)
    assert res.code == 0, res.text
    assert sorted(f["outside_filters"] for f in json.loads(res.out)["folders"]) == [1, 5], res.out
    assert migrator("verify", src.url, dst.url, src=src, dst=dst).code == 1

    res, rep = migrate(src, dst, tmp_path, "--state", str(state))
    assert res.code == 0, res.text
    # All copied: the filtered verify finds the copies outside its window no extras
    window = ("--since", "2019-03-15", "--before", "18-Mar-2019", "--max-size", "2K")
    res = migrator("verify", src.url, dst.url, *window, src=src, dst=dst)
    assert res.code == 0 and "5 source message(s) outside the plan's filters: not compared" in res.out, res.text
    assert rep["totals"]["copied"] == 6 and rep["totals"]["already_copied"] == 4 and not rep["totals"]["skipped"]
    want, got = rig.snapshot(src), rig.snapshot(dst)
    assert {k: multiset(v) for k, v in got.items()} == {k: multiset(v) for k, v in want.items()}
