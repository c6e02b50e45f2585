"""merge = true: two source folders into one destination keep every message, even identical ones."""

from __future__ import annotations

import re

import pytest

from tests import rig
from tests.e2e.test_plan import make_plan, run_plan
from tests.helpers import dt, migrator, multiset, simple_message

pytestmark = pytest.mark.e2e


def test_merged_folders_with_identical_messages_keep_every_copy(new_account, tmp_path):
    src, dst = new_account("slash"), new_account("slash")
    shared = simple_message(1)  # the same bytes in both folders (a mail filed twice)
    rig.seed(src, ["Old Sent"], [(shared, ("\\Seen",), dt(1)), (simple_message(2), (), dt(2))] +
             [(simple_message(10 + i), (), dt(3)) for i in range(30)])
    rig.seed(src, ["Sent"], [(simple_message(3), (), dt(3))] + [(simple_message(50 + i), (), dt(4)) for i in range(30)])
    path = tmp_path / "merge.toml"
    assert make_plan(src, dst, path, "--map", "Old Sent=Sent").code == 2  # a collision until merge = true
    path.write_text(re.sub(r'(?m)^action = "copy"$', 'action = "copy"\nmerge = true', path.read_text()))
    res, report = run_plan(src, dst, path, tmp_path, "--workers", "4")
    assert res.code == 0, res.text
    assert report["totals"]["copied"] == 63

    # Later the same message is filed in the other folder too. Its twin on the destination
    # belongs to "Old Sent": "Sent" must copy its own, not adopt the other folder's.
    rig.seed(src, ["Sent"], [(shared, ("\\Seen",), dt(1))])
    res, report = run_plan(src, dst, path, tmp_path)
    assert res.code == 0, res.text
    assert report["totals"]["copied"] == 1 and report["totals"]["found_on_destination"] == 0
    before, after = rig.snapshot(src), rig.snapshot(dst)
    assert multiset(after[("Sent",)]) == multiset(before[("Sent",)]) + multiset(before[("Old Sent",)])

    v = migrator("verify", str(path), src=src, dst=dst)
    assert v.code == 0, v.text
    assert "Old Sent + Sent -> Sent" in v.out

    # Without the state file: reconciled by content, still nothing lost and nothing twice.
    res, report = run_plan(src, dst, path, tmp_path, "--state", str(tmp_path / "fresh.sqlite"))
    assert res.code == 0 and report["totals"]["copied"] == 0, res.text
    assert multiset(rig.snapshot(dst)[("Sent",)]) == multiset(after[("Sent",)])
