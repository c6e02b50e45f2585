"""Microsoft 365's throttling and quirks (issue 16), against Dovecot behind tests/m365_standin.py.

Microsoft 365 cannot be reached from here: M365StandIn is a stand-in, a proxy that answers APPENDs
as Exchange Online is documented and reported to (`NO Request is throttled. Suggested Backoff
Time: N ms`, with or without a code, then a BYE), and closes a session after 10 errors. It counts
the APPENDs it forwards, so a test sees whether any session sent one during a wait the server asked
for."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter

import pytest

from tests import rig
from tests.helpers import dt, migrator, simple_message
from tests.m365_standin import M365StandIn

pytestmark = pytest.mark.e2e

GRACE = 0.25  # an APPEND already on its way when the server answered another session is not a new one


def seeded(new_account, n: int):
    src, dst = new_account(), new_account()
    rig.seed(src, ["INBOX"], [(simple_message(i, body="x" * (300 + i % 5)), (), dt(i % 20)) for i in range(n)])
    return src, dst


def batch_csv(tmp_path, pairs, port: int | None = None):
    """The batch file of `pairs`, each password in a file of its own; the destinations reached
    through `port` (the stand-in) when given."""
    rows = ["source,destination,src_password_file,dst_password_file"]
    for n, (src, dst) in enumerate(pairs):
        for side, acc in (("s", src), ("d", dst)):
            (tmp_path / f"{side}{n}.pw").write_text(acc.password)
            (tmp_path / f"{side}{n}.pw").chmod(0o600)
        via = dataclasses.replace(dst, port=port) if port else dst
        rows.append(f"{src.url},{via.url},{tmp_path / f's{n}.pw'},{tmp_path / f'd{n}.pw'}")
    (tmp_path / "b.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "b.csv"


def held(account) -> Counter:
    return Counter(sha for sha, _flags, _date in rig.snapshot(account).get(("INBOX",), []))


@pytest.mark.parametrize("wording,bye", [("bare", False), ("throttled", True)])
def test_four_workers_wait_out_every_throttle_and_lose_nothing(new_account, tmp_path, wording, bye):
    src, dst = seeded(new_account, 120)
    with M365StandIn(dst.port, throttle_every=10, throttles=3, backoff_ms=600, wording=wording, bye=bye,
                     no_multiappend=True, error_budget=10) as m365:
        via = dataclasses.replace(dst, port=m365.port)
        res = migrator("migrate", src.url, via.url, "--state", str(tmp_path / "state"), "--report",
                       str(tmp_path / "report.json"), "--workers", "4", "--batch-mb", "0.1", "--in-flight-grace", "0.3",
                       src=src, dst=via,
                       env={"MIGRATOR_PROGRESS_INTERVAL": "60"})  # not --quiet: the waits are said
        windows, appends = list(m365.windows), list(m365.appends)
    assert res.code == 0, res.text
    report = json.loads((tmp_path / "report.json").read_text())
    assert held(dst) == held(src)  # 0 lost, 0 duplicated
    assert report["totals"]["failed"] == 0 and report["totals"]["copied"] == 120
    assert len(windows) == 3
    for start, end in windows:  # no session sent an APPEND while the server asked to wait
        assert sum(1 for t, _s in appends if start + GRACE <= t <= end) == 0, (start, end)
    waits = report["throttle_waits"]
    assert len(waits) >= 3 and all(w["side"] == "destination" and w["seconds"] > 0 for w in waits)
    said = [line for line in res.err.splitlines() if line.startswith("destination throttled: waiting")]
    assert said and "as the server asked" in said[0], res.err


def test_twelve_messages_over_the_size_limit_are_reported_and_no_session_reaches_its_tenth_error(new_account,
                                                                                                 tmp_path):
    """12 of 30 messages over the stand-in's size limit, one APPEND each (no MULTIAPPEND), 2 workers:
    exactly those 12 are reported, each sent once; the rest arrive identical, once; and no session
    is pushed to the 10th error, at which Microsoft 365 closes it (--dst-preset office365)."""
    src, dst = new_account(), new_account()
    big = {i for i in range(30) if i % 5 < 2}  # 12, spread over the folder
    msgs = [simple_message(i, body="x" * (3000 if i in big else 100)) for i in range(30)]
    rig.seed(src, ["INBOX"], [(m, (), dt(i)) for i, m in enumerate(msgs)])
    report = tmp_path / "report.json"
    with M365StandIn(dst.port, max_size=2000, error_budget=10, no_multiappend=True) as m365:
        via = dataclasses.replace(dst, port=m365.port)
        res = migrator("migrate", src.url, via.url, "--dst-preset", "office365", "--state", str(tmp_path / "state"),
                       "--report", str(report), "--workers", "2", "--quiet", src=src, dst=via)
        too_big, closed, most = list(m365.too_big), m365.closed, m365.errors
    assert res.code == 1, res.text
    failures = json.loads(report.read_text())["failures"]
    assert sorted(f["uid"] for f in failures) == sorted(i + 1 for i in big)
    assert all("TOOBIG" in f["reason"] for f in failures), failures
    assert len(too_big) == 12  # each refused message sent once
    assert closed == 0 and most < 10, (closed, most)
    assert held(dst) == held(src) - Counter(rig.body_sha(msgs[i]) for i in big)


def test_flagged_is_set_after_the_append_and_mdnsent_is_no_difference(new_account, tmp_path):
    """The stand-in drops \\Flagged from APPEND and adds $MDNSent to messages asking for a read
    receipt: with --dst-preset office365 flagged messages end flagged, and neither verify nor the
    flag sync of a rerun takes $MDNSent for a difference."""
    src, dst = new_account(), new_account()
    receipt = "Disposition-Notification-To: <s@example.com>\r\n"
    rig.seed(src, ["INBOX"], [(simple_message(i, extra_headers=receipt if i % 3 == 0 else ""),
                               ("\\Flagged",) if i % 2 else ("\\Seen",), dt(i)) for i in range(8)])
    state = str(tmp_path / "state")
    with M365StandIn(dst.port, drop_flagged=True, add_mdnsent=True, no_multiappend=True) as m365:
        via = dataclasses.replace(dst, port=m365.port)
        res = migrator("migrate", src.url, via.url, "--dst-preset", "office365", "--state", state, "--quiet",
                       src=src, dst=via)
        assert res.code == 0, res.text
        got = {sha: flags for sha, flags, _d in rig.snapshot(dst)[("INBOX",)]}
        for sha, flags, _d in rig.snapshot(src)[("INBOX",)]:
            assert "\\Flagged" not in flags or "\\Flagged" in got[sha], (flags, got[sha])
        assert sum("$MDNSent" in f for f in got.values()) == 3  # added by the stand-in, kept

        res = migrator("verify", src.url, via.url, "--dst-preset", "office365", src=src, dst=via)
        assert res.code == 0, res.text
        res = migrator("verify", src.url, via.url, src=src, dst=via)  # without the preset: a difference
        assert res.code == 1 and "$MDNSent" in res.out, res.text

        rig.seed(src, ["INBOX"], [(simple_message(9), (), dt(9))])  # something new: the rerun marches INBOX
        report = tmp_path / "rerun.json"
        res = migrator("migrate", src.url, via.url, "--dst-preset", "office365", "--state", state, "--quiet",
                       "--report", str(report), src=src, dst=via)
        assert res.code == 0, res.text
    rerun = json.loads(report.read_text())
    assert rerun["totals"]["copied"] == 1 and rerun["totals"]["flags_updated"] == 0, rerun["totals"]
    assert sum("$MDNSent" in f for _s, f, _d in rig.snapshot(dst)[("INBOX",)]) == 3


@pytest.mark.parametrize("cluster", [None, "local"])
def test_a_throttle_on_one_mailbox_of_a_batch_pauses_every_mailbox_on_that_host(new_account, tmp_path, cluster):
    """batch, 3 mailboxes at once to one host (the stand-in): the server throttles one session only
    (the others' APPENDs would go through), and no mailbox sends an APPEND during the wait it asked
    for: the governor of the host is the batch's, not each mailbox's. Each mailbox's report says it
    waited. With --cluster local each mailbox runs in a worker process of its own, and the pause is
    told to the other processes (cluster.share_throttles)."""
    pairs = [seeded(new_account, 150) for _ in range(3)]
    with M365StandIn(pairs[0][1].port, throttle_every=60, throttles=1, backoff_ms=1500, no_multiappend=True,
                     one_session=True) as m365:
        res = migrator("batch", str(batch_csv(tmp_path, pairs, m365.port)), "--parallel", "3", "--workers", "1",
                       "--quiet", "--state-dir", str(tmp_path / "state"), "--report", str(tmp_path / "fleet.json"),
                       *(["--cluster", cluster] if cluster else []))
        windows, appends, throttled = list(m365.windows), list(m365.appends), list(m365.throttled)
    assert res.code == 0, res.text
    for src, dst in pairs:
        assert held(dst) == held(src)  # 0 lost, 0 duplicated
    assert len(windows) == 1
    start, end = windows[0]
    during = [s for t, s in appends + throttled if start + GRACE <= t <= end]
    assert during == [], during  # no session of any mailbox sent an APPEND during the wait
    others = {s for t, s in appends if s != m365.window_sessions[0]}
    assert len(others) >= 2 and any(t > end for t, s in appends if s in others)  # the others went on after it
    fleet = json.loads((tmp_path / "fleet.json").read_text())["mailboxes"]
    assert [m["throttle_waits"] for m in fleet] == [1, 1, 1], fleet  # each mailbox says it waited
    assert all(m["waited_seconds"] >= 1.0 for m in fleet), fleet
    if cluster:
        assert len({m["ran_on"] for m in fleet}) == 3, fleet  # three processes, one pause


def test_max_bytes_per_day_stops_with_one_line_and_the_next_run_goes_on(new_account, tmp_path):
    src, dst = new_account(), new_account()
    rig.seed(src, ["INBOX"], [(simple_message(i, body="y" * 5000), (), dt(i)) for i in range(40)])
    args = ("migrate", src.url, dst.url, "--state", str(tmp_path / "state"), "--workers", "1", "--quiet",
            "--batch-mb", "0.1")  # batches of ~20 messages: the second would go over 150K
    res = migrator(*args, "--max-bytes-per-day", "150K", src=src, dst=dst)
    assert res.code == 75, res.text
    lines = [line for line in res.err.splitlines() if line.strip()]
    said = f"byte budget for {src.user}@127.0.0.1 is spent"  # the account's: the next FETCH would go over
    assert len(lines) == 1 and said in lines[0] and "tomorrow" in lines[0], res.err
    assert 0 < sum(held(dst).values()) < 40
    res = migrator(*args, "--max-bytes-per-day", "1M", src=src, dst=dst)
    assert res.code == 0, res.text
    assert held(dst) == held(src)  # the rest, each once


def test_max_bytes_per_day_is_each_mailboxs_in_a_batch_not_the_hosts(new_account, tmp_path):
    """Two mailboxes of about 100K each on one host, --max-bytes-per-day 150K: Gmail's caps, which
    the option is for, are per user, so each mailbox has its own budget and both are copied whole
    (a budget per host stopped the batch in its second mailbox, exit 75). A mailbox over it alone
    still stops."""
    pairs = []
    for n in range(3):
        src, dst = new_account(), new_account()
        count = 60 if n == 2 else 20  # the third: about 300K, over its own budget
        rig.seed(src, ["INBOX"], [(simple_message(i, body="y" * 5000), (), dt(i)) for i in range(count)])
        pairs.append((src, dst))
    res = migrator("batch", str(batch_csv(tmp_path, pairs)), "--parallel", "1", "--workers", "1", "--quiet",
                   "--batch-mb", "0.1", "--max-bytes-per-day", "150K", "--state-dir", str(tmp_path / "state"),
                   "--report", str(tmp_path / "fleet.json"))
    fleet = json.loads((tmp_path / "fleet.json").read_text())["mailboxes"]
    assert [m["exit_code"] for m in fleet] == [0, 0, 75], res.text
    for src, dst in pairs[:2]:
        assert held(dst) == held(src)
    assert 0 < sum(held(pairs[2][1]).values()) < 60
    assert f"{pairs[2][0].user}@127.0.0.1" in fleet[2]["first_error"]["reason"], fleet[2]
