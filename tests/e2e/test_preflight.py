"""Preflight end to end on Dovecot (issue 15): `plan --dst-preset office365` finds, before anything
is copied, a message over the destination's APPENDLIMIT and two folders whose names differ only in
case (office365's folder names are case-insensitive); the plan file carries the findings; `run`
then reports the same message (not sent) and the same folder (not copied), and copies the rest.

Dovecot 2.3 neither advertises APPENDLIMIT nor answers STATUS APPENDLIMIT; it enforces a largest
message with the quota plugin's quota_max_mail_size ("[LIMIT] Mail size is larger than the maximum
..."). The destination instance here has both: the limit enforced per user, and advertised with
`imap_capability = +APPENDLIMIT=2048`, as a server implementing RFC 7889 does by itself.
"""
from __future__ import annotations

import json
import tomllib

import pytest

from tests import rig
from tests.conftest import started
from tests.helpers import dt, migrator, simple_message

pytestmark = pytest.mark.e2e
LIMIT = 2048


class LimitedDovecot(rig.Dovecot):
    def _config(self) -> str:
        advertised = f"protocol imap {{\n  imap_capability = +APPENDLIMIT={LIMIT}"
        return super()._config().replace("protocol imap {", advertised, 1)


@pytest.fixture(scope="module")
def limited(rig_root):
    d = started(LimitedDovecot(rig_root, "limited"))
    yield d
    d.cleanup()


def test_preflight_finds_an_oversized_message_and_a_case_clash_and_the_run_reports_them(src_account, limited,
                                                                                         tmp_path):
    src, dst = src_account, limited.new_user(max_mail_size="2k")
    big = simple_message(2, body="x" * 3000)
    rig.seed(src, ["INBOX"], [(simple_message(1), (), dt(1)), (big, (), dt(2)), (simple_message(3), (), dt(3))])
    rig.seed(src, ["Work"], [(simple_message(4), (), dt(4))])
    rig.seed(src, ["work"], [(simple_message(5), (), dt(5))])
    plan = tmp_path / "plan.toml"

    res = migrator("plan", src.url, dst.url, "-o", str(plan), "--dst-preset", "office365", src=src, dst=dst)
    assert res.code == 0, res.text
    assert "too-big: INBOX: 1 message(s) over the 2K (2048 bytes) the destination accepts: not sent (UID 2)" in res.out
    assert "case-clash: work: destination 'work' and 'Work' (from 'Work') are one folder on office365" in res.out
    found = {(f["rule"], f["folder"], tuple(f["uids"])) for f in tomllib.loads(plan.read_text())["preflight"]}
    assert found == {("too-big", "INBOX", (2,)), ("case-clash", "work", ())}
    assert rig.list_folders(dst) == [("INBOX",)] and rig.snapshot(dst)[("INBOX",)] == []  # nothing written

    dry = tmp_path / "dry.json"
    res = migrator("run", str(plan), "--dry-run", "--report", str(dry), src=src, dst=dst)
    assert {(f["rule"], f["folder"]) for f in json.loads(dry.read_text())["preflight"]} == {
        ("too-big", "INBOX"), ("case-clash", "work")}

    report = tmp_path / "run.json"
    res = migrator("run", str(plan), "--report", str(report), "--quiet", src=src, dst=dst)
    assert res.code == 1, res.text
    rep = json.loads(report.read_text())
    assert [(f["folder"], f["uid"]) for f in rep["failures"]] == [("INBOX", 2)]
    assert "larger than the destination accepts" in rep["failures"][0]["reason"]
    assert [e["folder"] for e in rep["folder_errors"]] == ["work"]
    assert "case-insensitive" in rep["folder_errors"][0]["reason"]
    snap = rig.snapshot(dst)
    assert sorted(snap) == [("INBOX",), ("Work",)]
    assert len(snap[("INBOX",)]) == 2 and len(snap[("Work",)]) == 1
    assert rig.body_sha(big) not in {sha for sha, _f, _d in snap[("INBOX",)]}
