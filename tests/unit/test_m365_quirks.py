"""Microsoft 365's quirks as a destination (issue 16), on memory stores: the real Engine, milliseconds.

The destination MemoryServer does what Exchange Online is documented to do (migrator/stores/memory.py):
it closes a connection at its 10th refused call (`error_budget`), drops `\\Flagged` given in an APPEND
(`append_drops`) and adds `$MDNSent` to a message asking for a read receipt (`append_adds`). The run
is told so by `--dst-preset office365` (EngineOptions.destination). tests/e2e/test_provider_m365.py
does the same against Dovecot behind tests/m365_standin.py."""

from __future__ import annotations

from collections import Counter

import pytest

from migrator.accounts import parse_endpoint
from migrator.engine.flagrules import FlagRules
from migrator.engine.verify import verify
from migrator.naming import INBOX
from migrator.plan import FolderPlan, Plan
from migrator.planner import map_folders, planning_options
from migrator.preflight import folder_refusals, one_spelling
from migrator.presets import DestinationRules, destination_rules
from migrator.stores.base import FolderInfo
from migrator.stores.memory import MemoryServer
from tests.unit.test_engine_memory import World

OFFICE365 = destination_rules(["office365"])


def body(i: int, big: bool = False, receipt: bool = False) -> bytes:
    head = f"Message-ID: <{i}@m365.example>\r\nSubject: m{i}\r\n"
    head += "Disposition-Notification-To: <a@m365.example>\r\n" if receipt else ""
    return (head + "\r\n" + ("BIG " * 50 if big else f"body {i}") + "\r\n").encode()


def bodies(server: MemoryServer) -> Counter:
    return Counter(b for b, _flags, _date in server.contents(INBOX).values())


def flags_by_body(server: MemoryServer) -> dict[bytes, tuple[str, ...]]:
    return {b: flags for b, flags, _date in server.contents(INBOX).values()}


@pytest.mark.parametrize("preset", [True, False])
def test_twelve_refusals_end_reported_and_the_rest_identical_never_pushing_the_session_to_its_close(
        tmp_path, preset):
    """12 messages refused among 40, one APPEND each (no MULTIAPPEND), on 2 workers: exactly those
    12 reported, the others copied once. With the preset each session is replaced before its 10th
    error; without it the server's close (a BYE) costs the folder a march, and nothing is lost."""
    src = MemoryServer()
    refused = {body(i, big=True) for i in range(12)}
    for i in range(40):
        src.deliver(INBOX, body(i, big=i < 12))
    dst = MemoryServer(multiappend=False, error_budget=10)
    dst.refuse_appends(lambda b: b in refused, text="APPEND [TOOBIG] Message too large")
    world = World(src, dst, str(tmp_path / "state.sqlite"))

    stats = world.run(workers=2, batch_count=50, chunk_messages=50, destination=OFFICE365 if preset else None)
    failed = stats.failures
    assert sorted(f.uid for f in failed) == list(range(1, 13))
    assert all("TOOBIG" in f.reason for f in failed)
    assert bodies(dst) == bodies(src) - Counter(refused)  # the rest, each once
    if preset:
        assert dst.closed_on_errors == 0
    else:
        assert dst.closed_on_errors >= 1  # what the preset spares: without it the session was closed

    again = world.run(destination=OFFICE365 if preset else None)  # a rerun: reported again, nothing sent
    assert len(again.failures) == 12 and bodies(dst) == bodies(src) - Counter(refused)


def m365_like() -> MemoryServer:
    return MemoryServer(append_drops=["\\Flagged"],
                        append_adds=lambda b: ["$MDNSent"] if b"Disposition-Notification-To" in b else [])


def test_flagged_is_set_after_the_append_and_mdnsent_is_no_difference(tmp_path):
    src, dst = MemoryServer(), m365_like()
    for i in range(20):
        src.deliver(INBOX, body(i, receipt=i % 3 == 0), ["\\Flagged", "\\Seen"] if i % 2 else ["\\Seen"])
    world = World(src, dst, str(tmp_path / "state.sqlite"))

    stats = world.run(destination=OFFICE365)
    assert not stats.failures and not stats.warnings
    got, want = flags_by_body(dst), flags_by_body(src)
    for b, flags in want.items():  # every flagged message ends flagged; $MDNSent only where the server added it
        extra = ("$MDNSent",) if b"Disposition-Notification-To" in b else ()
        assert got[b] == tuple(sorted(flags + extra)), b

    src.change_flags(INBOX, 1, ["\\Seen", "\\Answered"])  # a change, so the rerun marches the folder
    again = world.run(destination=OFFICE365)  # its flag sync leaves $MDNSent alone
    assert again.total("flags_updated") == 1
    got[body(0, receipt=True)] = ("$MDNSent", "\\Answered", "\\Seen")
    assert flags_by_body(dst) == got

    plan = Plan(parse_endpoint("imap://a@src.example"), parse_endpoint("imap://b@dst.example"),
                [FolderPlan(INBOX, INBOX)])
    [diff] = verify(plan, src.connect, dst.connect, flag_rules=FlagRules.of_destination(OFFICE365))
    assert diff.identical, diff
    [diff] = verify(plan, src.connect, dst.connect)  # without the preset the server's $MDNSent is a difference
    assert len(diff.flags_differ) == 7


def test_without_the_preset_flagged_is_lost_and_mdnsent_is_removed_on_every_rerun(tmp_path):
    """What the preset changes, against the same server."""
    src, dst = MemoryServer(), m365_like()
    src.deliver(INBOX, body(1, receipt=True), ["\\Flagged"])
    world = World(src, dst, str(tmp_path / "state.sqlite"))
    world.run()
    assert flags_by_body(dst)[body(1, receipt=True)] == ("$MDNSent",)  # \Flagged lost in the APPEND
    src.change_flags(INBOX, 1, ["\\Flagged", "\\Seen"])  # a change, so the rerun marches the folder
    again = world.run()
    assert again.total("flags_updated") == 1 and flags_by_body(dst)[body(1, receipt=True)] == ("\\Flagged", "\\Seen")
    src.change_flags(INBOX, 1, ["\\Flagged"])
    dst.change_flags(INBOX, 1, ["\\Flagged", "\\Seen", "$MDNSent"])  # the server adds it again
    world.run()
    assert flags_by_body(dst)[body(1, receipt=True)] == ("\\Flagged",)  # removed again: on every rerun


def test_over_the_presets_ceiling_not_sent_over_its_default_limit_sent_and_the_refusal_says_which(tmp_path):
    """office365's limits, scaled down: over the ceiling (150 MB there) a message is reported without
    being sent; over the default limit (35 MB) or with a long line it is sent (an admin may have
    raised the limit), and a refusal's reason names the limit it is over."""
    src, dst = MemoryServer(), MemoryServer()
    long_line = b"Subject: wide\r\n\r\n" + b"x" * 200 + b"\r\n"
    huge = b"Subject: huge\r\n\r\n" + b"y\r\n" * 200
    for b in (long_line, body(2), huge):
        src.deliver(INBOX, b)
    sent: list[bytes] = []
    dst.refuse_appends(lambda b: sent.append(b) or b == long_line, text="APPEND BAD Command Error. 10")
    rules = DestinationRules(("office365",), max_message_size=100, max_message_ceiling=300, max_line_length=150)
    stats = World(src, dst, str(tmp_path / "state.sqlite")).run(destination=rules)
    assert sorted((f.uid, f.reason) for f in stats.failures) == [
        (1, "rejected by the destination: APPEND BAD Command Error. 10 (over office365's default message size "
            "limit of 100; a line over office365's limit of 150 characters)"),
        (3, "larger than the destination accepts (617 bytes, its limit is 300): not sent; see the plan's preflight")]
    assert huge not in sent and long_line in sent  # the one over the ceiling was never sent
    assert rules.exceeded(body(2)) == [] and list(bodies(dst)) == [body(2)]


def test_one_spelling_for_one_folder_on_a_case_insensitive_destination():
    """A name spelt otherwise than an existing destination folder is that folder; merged folders
    take the first one's spelling; clashing folders not merged are left to the case-clash rule;
    every change is said."""
    def plan_of(*names: str) -> Plan:
        return Plan(parse_endpoint("imap://a@src.example"), parse_endpoint("imap://b@dst.example"),
                    [FolderPlan((n,), (n,)) for n in names])

    plan = plan_of("archive", "Work", "work", "Lists", "LISTS", "Other")
    plan.folders[1].merge = plan.folders[2].merge = True
    said = one_spelling(plan, OFFICE365, existing=[("INBOX",), ("Archive",)])
    assert [fp.destination for fp in plan.folders] == [("Archive",), ("Work",), ("Work",), ("Lists",), ("LISTS",),
                                                       ("Other",)]
    assert said == ["'archive' goes into the destination's 'Archive', not 'archive': office365's folder names are "
                    "case-insensitive",
                    "'work' goes into the destination's 'Work', not 'work': office365's folder names are "
                    "case-insensitive"]
    assert [(fp.source, rule) for fp, rule, _why in folder_refusals(plan, OFFICE365)] == [(("LISTS",), "case-clash")]
    untouched = plan_of("archive")
    assert one_spelling(untouched, None, existing=[("Archive",)]) == [] and untouched.folders[0].destination == (
        "archive",)


def test_preset_office365_chooses_source_folders_and_points_to_dst_preset_for_a_destination():
    src = [FolderInfo(("INBOX",), "INBOX"), FolderInfo(("Calendar",), "Calendar")]
    dst = [FolderInfo(("INBOX",), "INBOX")]
    choices, warnings = map_folders(src, dst, "/", planning_options(presets=["office365"]))
    assert [c.action for c in choices] == ["copy", "skip"]
    assert len(warnings) == 1 and "--dst-preset office365" in warnings[0]
    _, warnings = map_folders(src, dst, "/", planning_options(presets=["office365"], dst_presets=["office365"]))
    assert warnings == []  # said once it is given


def test_presets_carry_gmail_daily_byte_caps_and_any_preset_may_set_a_session_error_budget():
    from migrator.presets import DestinationRules, load_preset

    assert load_preset("gmail").max_bytes_per_day == 2500 * 1024 ** 2  # down, as the source
    other = DestinationRules(("other",), session_errors=5, max_bytes_per_day=500 * 1024 ** 2)
    both = load_preset("office365").destination + other
    assert both.session_errors == 5 and both.max_bytes_per_day == 500 * 1024 ** 2
