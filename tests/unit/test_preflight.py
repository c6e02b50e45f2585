"""The preflight's rules (migrator/preflight.py), each on its own, then all of them against memory
stores, and the plan file's [[preflight]] tables; the office365 preset's [destination] table."""
from __future__ import annotations

import pytest

from migrator.accounts import parse_endpoint
from migrator.errors import UsageError
from migrator.filters import Filters
from migrator.naming import INBOX
from migrator.plan import SKIP, FolderPlan, Plan
from migrator.plan_io import read_plan
from migrator.planner import planning_options
from migrator.preflight import (
    Finding,
    folder_refusals,
    longest_line,
    message_findings,
    preflight,
    quota_findings,
    render,
)
from migrator.presets import DestinationRules, destination_rules
from migrator.stores.base import Limits, MessageMeta
from migrator.stores.memory import MemoryServer
from tests.unit.test_filters import edited, written

RULES = DestinationRules(("test",), max_message_size=1000, max_message_ceiling=5000, max_line_length=80,
                         case_insensitive=True, reserved_names=("Calendar",), forbidden_characters="#")


def plan_of(*names, **kw) -> Plan:
    return Plan(parse_endpoint("imap://a@src.example"), parse_endpoint("imap://b@dst.example"),
                [FolderPlan(n, n) for n in names], **kw)


def meta(uid: int, size: int = 100, flags=()) -> MessageMeta:
    return MessageMeta(uid, size, tuple(flags), "01-Mar-2024 10:00:00 +0000")


def test_office365_as_a_destination():
    rules = destination_rules(["office365"])
    assert rules.max_message_size == 35 * 1024**2 and rules.max_message_ceiling == 150 * 1024**2
    assert rules.max_line_length == 10500 and rules.case_insensitive and "Calendar" in rules.reserved_names
    assert destination_rules(["gmail"]) is None
    with pytest.raises(UsageError, match="says nothing of a destination"):
        planning_options(dst_presets=["gmail"])


def test_names_the_destination_cannot_hold():
    plan = plan_of(("Calendar", "Sub"), ("Work",), ("work",), ("WORK",), ("a#b",), ("Other",))
    plan.folders[-1].action = SKIP
    got = [(display_of(fp), rule) for fp, rule, _why in folder_refusals(plan, RULES)]
    assert got == [("Calendar/Sub", "reserved-name"), ("work", "case-clash"), ("WORK", "case-clash"),
                   ("a#b", "forbidden-character")]
    assert folder_refusals(plan, None) == []
    assert folder_refusals(plan, DestinationRules(("x",))) == []  # case-sensitive, nothing reserved


def display_of(fp: FolderPlan) -> str:
    return "/".join(fp.source)


def test_merged_folders_and_one_destination_are_no_case_clash():
    plan = plan_of(("A",), ("a",))
    plan.folders[1].destination = ("A",)  # both into one folder: check_collisions' business
    assert folder_refusals(plan, RULES) == []
    plan = plan_of(("A",), ("a",))
    for fp in plan.folders:
        fp.merge = True
    assert folder_refusals(plan, RULES) == []


def test_sizes_against_appendlimit_a_folders_limit_and_a_presets_limits():
    fp = FolderPlan(INBOX, INBOX)
    metas = [meta(1, 900), meta(2, 1500), meta(3, 6000), meta(4, 2500)]
    got = {f.rule: f.uids for f in message_findings(fp, metas, Limits(append_limit=2000), RULES)}
    assert got == {"too-big": (3, 4), "over-preset-limit": (2,)}
    got = {f.rule: f.uids for f in message_findings(fp, metas, Limits(folder_append_limits={INBOX: 1200}), None)}
    assert got == {"too-big": (2, 3, 4)}
    got = {f.rule: f.uids for f in message_findings(fp, metas, Limits(), RULES)}  # the ceiling alone
    assert got == {"too-big": (3,), "over-preset-limit": (2, 4)}
    assert message_findings(fp, metas, Limits(), None) == []


def test_keywords_a_destination_does_not_keep():
    fp = FolderPlan(INBOX, INBOX)
    metas = [meta(1, flags=("\\Seen", "$Label1")), meta(2, flags=("$Forwarded",)), meta(3, flags=("\\Flagged",))]
    [f] = message_findings(fp, metas, Limits(permanent_flags=("\\Seen", "\\Flagged", "$Forwarded")), None)
    assert f.rule == "keywords-dropped" and f.uids == (1,) and "$Label1 would be lost" in f.detail
    assert message_findings(fp, metas, Limits(permanent_flags=("\\Seen", "\\*")), None) == []
    assert message_findings(fp, metas, Limits(permanent_flags=None), None) == []  # not told


def test_the_quota():
    window = {"INBOX": [meta(1, 3000), meta(2, 500)], "Work": [meta(3, 700)]}
    got = quota_findings(window, (1000, 5000))
    assert [(f.folder, f.uids) for f in got] == [("*", ())]  # 4200 bytes, 4000 free
    got = quota_findings(window, (2500, 5000))
    assert [(f.folder, f.uids) for f in got] == [("INBOX", (1,)), ("*", ())]
    assert quota_findings(window, (0, 5000)) == [] and quota_findings(window, None) == []


def test_longest_line():
    assert longest_line(b"ab\r\ncdef\r\n\r\n") == 4 and longest_line(b"x" * 90) == 90 and longest_line(b"") == 0


def test_preflight_against_memory_stores_reads_only():
    src = MemoryServer()
    src.create(("Work",))
    src.create(("work",))
    src.deliver(INBOX, b"Subject: a\r\n\r\n" + b"y" * 100 + b"\r\n", ("$Label1",))  # a long line
    src.deliver(INBOX, b"Subject: b\r\n\r\n" + b"z" * 3000 + b"\r\n")  # over the APPENDLIMIT
    src.deliver(INBOX, b"Subject: c\r\n\r\nshort\r\n", ("\\Deleted",))  # not copied: not looked at
    src.deliver(("Work",), b"Subject: d\r\n\r\n" + b"w" * 900 + b"\r\n")
    dst = MemoryServer(append_limit=2000, permanent_flags=("\\Seen",), quota=(0, 10_000))
    plan = plan_of(*src.names())
    found = preflight(src.connect(), dst.connect(), plan, RULES)
    got = {(f.rule, f.folder, f.uids) for f in found}
    assert got == {("case-clash", "work", ()), ("too-big", "INBOX", (2,)), ("keywords-dropped", "INBOX", (1,)),
                   ("long-lines", "INBOX", (1, 2)), ("long-lines", "Work", (1,))}
    assert dst.names() == [INBOX] and dst.contents(INBOX) == {}  # nothing written
    assert "Preflight: 5 finding(s)" in render(found)[0]
    plan.filters = Filters.parse(max_size="1K")  # the filters' window only
    got = {(f.rule, f.folder, f.uids) for f in preflight(src.connect(), dst.connect(), plan, None)}
    assert got == {("keywords-dropped", "INBOX", (1,))}


def test_findings_travel_in_the_plan_file(tmp_path):
    plan = plan_of(INBOX)
    plan.preflight = [Finding("too-big", "INBOX", "1 message(s) over", (3, 4)).as_dict(),
                      Finding("case-clash", "work", "one folder").as_dict()]
    path, text = written(plan, tmp_path)
    assert '[[preflight]]\nrule = "too-big"\nfolder = "INBOX"\ndetail = "1 message(s) over"\nuids = [3, 4]' in text
    assert read_plan(path).preflight == plan.preflight
    edited(path, text, 'rule = "case-clash"', 'rule = "case-clash"\nsize = 3')
    with pytest.raises(UsageError, match="unknown key 'size' in \\[\\[preflight\\]\\] number 2"):
        read_plan(path)
