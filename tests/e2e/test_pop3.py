"""POP3 as a source: read-only, one folder, stable UIDs from UIDL, nothing removed from the server."""

from __future__ import annotations

import json
import re
import signal
import time

import pytest

from migrator.engine.content import at_risk
from migrator.stores.pop3 import _Pop3
from tests import rig
from tests.helpers import dt, migrator, simple_message

pytestmark = pytest.mark.e2e


def test_pop3_to_imap_copies_inbox_once_and_leaves_the_source_alone(src_account, dst_account, tmp_path):
    received = b"Received: from mx.example.com by mail.example.com; Tue, 02 Jun 2020 10:11:12 +0200\r\n"
    older = b"Received: from a by mx.example.com;\r\n Mon, 01 Jun 2020 09:00:00 +0000\r\n"
    msgs = [received + older + simple_message(i) for i in range(5)] + [simple_message(9)] * 2  # two exact duplicates
    rig.seed(src_account, ["INBOX"], msgs)
    before = rig.snapshot(src_account)
    state = str(tmp_path / "s.sqlite")

    mark = log_offset(src_account)
    res = migrator("migrate", src_account.pop3_url, dst_account.url, "--state", state, "--report",
                   str(tmp_path / "r.json"), src=src_account, dst=dst_account)
    assert res.code == 0, res.text
    assert json.loads((tmp_path / "r.json").read_text())["totals"]["copied"] == 7
    asked = session_counts(src_account, mark)
    assert (asked["top"], asked["retr"]) == (0, 7), asked  # each date taken from the RETR'd bytes

    dst = rig.snapshot(dst_account)[("INBOX",)]
    assert sorted(sha for sha, _f, _d in dst) == sorted(sha for sha, _f, _d in before[("INBOX",)])
    # INTERNALDATE from the newest (first) Received: header, else Date: (the rig runs in UTC)
    assert sorted(d for _sha, _f, d in dst) == ["02-Jun-2020 08:11:12 +0000"] * 5 + ["14-Mar-2019 13:09:26 +0000"] * 2
    # QUIT without DELE: nothing removed. (Dovecot itself marks POP3-downloaded mail \Seen.)
    after = rig.snapshot(src_account)[("INBOX",)]
    assert sorted(sha for sha, _f, _d in after) == sorted(sha for sha, _f, _d in before[("INBOX",)])

    mark = log_offset(src_account)
    again = migrator("migrate", src_account.pop3_url, dst_account.url, "--state", state, "--report",
                     str(tmp_path / "r2.json"), src=src_account, dst=dst_account)
    assert again.code == 0, again.text
    assert json.loads((tmp_path / "r2.json").read_text())["totals"]["copied"] == 0
    asked = session_counts(src_account, mark)
    assert (asked["top"], asked["retr"]) == (0, 0), asked  # nothing new: no message is read

    ok = migrator("verify", src_account.pop3_url, dst_account.url, src=src_account, dst=dst_account)
    assert ok.code == 0, ok.text


def test_pop3_cannot_be_a_destination(src_account, dst_account):
    res = migrator("migrate", src_account.url, dst_account.pop3_url, src=src_account, dst=dst_account)
    assert res.code == 2
    assert "pop3:// can only be a source" in res.err


# -- the real-world corpus through POP3, reruns, crashes; what each run asks the POP3 server -----------


def log_offset(account) -> int:
    """Where the account's Dovecot log ends now: session_counts() counts what comes after."""
    return account.server.log.stat().st_size


def session_counts(account, since: int, service: str = "pop3", timeout: float = 10.0) -> dict:
    """The counters of the account's `service` sessions logged after offset `since`, summed, from
    Dovecot's own line at each session's end: pop3 "top=N/bytes, retr=N/bytes, ...", imap
    "... body_count=N body_bytes=N". Waits until every session that logged in has logged its end."""
    user = re.escape(account.user)
    deadline = time.monotonic() + timeout
    while True:
        with open(account.server.log, "rb") as f:
            f.seek(since)
            text = f.read().decode("utf-8", "replace")
        logins = len(re.findall(rf"{service}-login: Info: Login: user=<{user}>", text))
        ends = re.findall(rf"{service}\({user}\)<[^\n]*?Disconnected:([^\n]*)", text)
        if (logins and len(ends) == logins) or time.monotonic() > deadline:
            assert logins == len(ends) > 0, text[-2000:]
            counts = {"sessions": logins}
            for end in ends:
                for key, value in re.findall(r"(\w+)=(\d+)", end):
                    counts[key] = counts.get(key, 0) + int(value)
            return counts
        time.sleep(0.05)


def longest_line(raw: bytes) -> int:
    return max(len(line) for line in raw.split(b"\n"))


def pop3_run(src, dst, tmp_path, state: str, name: str, *extra: str, env: dict | None = None):
    report = tmp_path / f"{name}.json"
    res = migrator("migrate", src.pop3_url, dst.url, "--state", str(tmp_path / state), "--report", str(report),
                   "--quiet", *extra, src=src, dst=dst, env=env)
    return res, (json.loads(report.read_text()) if report.exists() else {})


def verify_pop3(src, dst) -> dict:
    res = migrator("verify", src.pop3_url, dst.url, "--json", src=src, dst=dst)
    report = json.loads(res.out)
    assert res.code == (0 if report["identical"] else 1), res.text
    return report


def message_count(account) -> int:
    c = rig.connect(account)
    try:
        return c.folder_status("INBOX", ["MESSAGES"])[b"MESSAGES"]
    finally:
        c.logout()


def served_bodies(account) -> list[bytes]:
    """Every message as the account's POP3 server serves it (RETR), line ends as sent."""
    conn = _Pop3(account.host, account.pop3_port, timeout=30)
    try:
        conn.user(account.user)
        conn.pass_(account.password)
        return [conn.retr_bytes(i) for i in range(1, conn.stat()[0] + 1)]
    finally:
        conn.quit()


def altered_by_dovecot(raw: bytes) -> bool:
    """Bytes Dovecot may change when they are APPENDed as POP3 serves them: bare CR line ends, NUL
    octets (README, Limits). migrator reports each copy whose stored size differs."""
    return b"\x00" in raw or b"\r" in raw.replace(b"\r\n", b"")


def test_pop3_corpus_copied_whole_rerun_reads_nothing_and_reruns_without_state_find_the_copies(new_account, tmp_path):
    """The whole corpus, lines over 2,048 octets and messages without a final newline (which POP3 serves
    with CRLF added, so their LIST size is not the size of the bytes served) included."""
    src, dst = new_account(prefix="p3c"), new_account(prefix="p3d")
    corpus = [raw for _path, raw in rig.corpus_messages()]
    long_lines = [raw for raw in corpus if longest_line(raw) > 2048]
    no_final_newline = sum(1 for raw in corpus if not raw.endswith(b"\n"))
    assert len(corpus) == 1186 and len(long_lines) == 12 and no_final_newline == 70  # the files as they are
    rig.seed(src, ["INBOX"], corpus)
    n = len(corpus)

    mark, dst_mark = log_offset(src), log_offset(dst)
    res, report = pop3_run(src, dst, tmp_path, "s1.sqlite", "first")
    asked = session_counts(src, mark)
    assert asked["top"] == 0 and asked["retr"] == n, asked  # each message read once, for its copy
    # An empty destination: nothing read there for reconciliation, only the copies read back at the
    # folder's end (engine/content.py): those whose bytes are at risk and the run's first copy, one
    # holding NUL maybe twice (BODY[], then BINARY[]: stores/imap.py, _restore_nul).
    served = served_bodies(src)
    read_back, with_nul = sum(1 for body in served if at_risk(body)), sum(1 for body in served if b"\x00" in body)
    read = session_counts(dst, dst_mark, "imap")["body_count"]
    assert read_back <= read <= read_back + 1 + with_nul, (read, read_back, with_nul)
    # Every message is copied. Those Dovecot changes while storing them are reported, one by one.
    altered = [f for f in report["failures"] if "changed the message while storing it" in f["reason"]]
    # And the two dated before 1970, which a Maildir stores as dates in 2105 (README, Limits).
    misdated = [f for f in report["failures"] if "another INTERNALDATE (23-Mar-2105" in f["reason"]]
    assert len(altered) + len(misdated) == report["totals"]["failed"] and (len(altered), len(misdated)) == (8, 2)
    assert report["totals"]["copied"] + len(altered) + len(misdated) == n and res.code == 1, res.text
    assert message_count(dst) == n
    served_long = sum(1 for body in rig.fetch_bodies(dst, ["INBOX"]) if longest_line(body) > 2048)
    assert served_long == len(long_lines)
    verified = verify_pop3(src, dst)["folders"][0]
    assert verified["source_messages"] == verified["destination_messages"] == n
    # verify finds exactly those copies changed; and two dates a Maildir cannot hold (before 1970).
    assert len(verified["missing"]) == len(verified["extra"]) == len(altered), verified
    assert sorted(m["source_uid"] for m in verified["missing"]) == sorted(f["uid"] for f in altered)
    assert [d["source_date"][7:11] for d in verified["date_differs"]] == ["1969", "1969"], verified["date_differs"]
    assert not verified["flags_differ"]

    # Nothing new: the rerun lists (UIDL, LIST) and reads no message, neither TOP nor RETR.
    mark, dst_mark = log_offset(src), log_offset(dst)
    res, report = pop3_run(src, dst, tmp_path, "s1.sqlite", "again")
    assert report["totals"]["copied"] == 0 and report["totals"]["already_copied"] == n, res.text
    assert report["totals"]["failed"] == len(altered) + len(misdated)  # reported again, not copied again
    asked = session_counts(src, mark)
    assert asked["top"] == 0 and asked["retr"] == 0, asked
    assert session_counts(dst, dst_mark, "imap")["body_count"] == 0
    assert message_count(dst) == n

    # The state file lost (another --state), then started over (--reset-state): every copy is found
    # again by its bytes, and those Dovecot changed by their loose form (reported again, not
    # copied). Not those holding NUL, which Dovecot stored re-encoded in base64: they are appended
    # (and reported) again (docs/resume.md, the limits).
    with_nul_sizes = {len(body) for body in served if b"\x00" in body}
    reencoded = [f for f in altered if int(re.search(r"\((\d+) bytes sent", f["reason"]).group(1)) in with_nul_sizes]
    assert len(reencoded) == 2, altered
    runs = (("fresh", "s2.sqlite", ()), ("reset", "s1.sqlite", ("--reset-state",)))
    for k, (name, state, extra) in enumerate(runs, 1):
        res, report = pop3_run(src, dst, tmp_path, state, name, *extra)
        # The misdated copies are found by their bytes, and reported (kept, not copied again).
        assert report["totals"]["found_on_destination"] == n - len(altered) - len(misdated), (name, res.text)
        assert report["totals"]["copied"] == 0, (name, res.text)
        assert report["totals"]["failed"] == len(altered) + len(misdated), (name, res.text)
        assert message_count(dst) == n + k * len(reencoded), name


@pytest.mark.parametrize("point", ["append-sent:3", "intent-written:3"])
def test_pop3_kill_9_mid_copy_then_rerun_duplicates_nothing(new_account, tmp_path, point):
    """kill -9 with messages stored but not confirmed (append-sent) or about to be sent (intent-written);
    the batches hold messages without a final newline, whose LIST size is not their served size."""
    src, dst = new_account(prefix="p3k"), new_account(prefix="p3l")
    corpus = [raw for _path, raw in rig.corpus_messages()
              if len(raw) < 200_000 and longest_line(raw) <= 2048 and not altered_by_dovecot(raw)]
    odd = [raw for raw in corpus if not raw.endswith(b"\n")]
    plain = [raw for raw in corpus if raw.endswith(b"\n")][::8]
    msgs = [m for i, raw in enumerate(odd) for m in (raw, *plain[2 * i: 2 * i + 2])]  # every third: no final newline
    rig.seed(src, ["INBOX"], msgs)
    n = len(msgs)

    res, _ = pop3_run(src, dst, tmp_path, "s.sqlite", "crash", "--batch-mb", "0.1",
                      env={"MIGRATOR_TEST_CRASH_AT": point})
    assert res.code == -signal.SIGKILL, f"{point} was not reached: {res.text}"
    stored = message_count(dst)
    assert 0 < stored < n

    res, report = pop3_run(src, dst, tmp_path, "s.sqlite", "rerun", "--batch-mb", "0.1")
    assert res.code == 0, res.text
    assert message_count(dst) == n
    t = report["totals"]
    assert t["copied"] + t["found_on_destination"] + t["already_copied"] == n
    assert verify_pop3(src, dst)["identical"]

    res, report = pop3_run(src, dst, tmp_path, "fresh.sqlite", "fresh", "--batch-mb", "0.1")
    assert res.code == 0, res.text
    assert report["totals"]["found_on_destination"] == n and report["totals"]["copied"] == 0
    assert message_count(dst) == n


def test_pop3_first_run_into_a_full_inbox_finds_copies_and_verify_compares_header_dates(new_account, tmp_path):
    """Copies already on the destination are found by their bytes, also one POP3 serves with CRLF added
    (no final newline: its LIST size is 2 short), in a dry run too. A copy found with another
    INTERNALDATE than the source's headers give (the listing does not read them: the date comes from
    the bytes RETR returns) is kept and reported, and so does verify."""
    src, dst = new_account(prefix="p3v"), new_account(prefix="p3w")
    dated = b"Received: from a by b; Tue, 02 Jun 2020 10:11:12 +0200\r\n" + simple_message(1)
    unterminated = simple_message(2).rstrip(b"\r\n")
    rig.seed(src, ["INBOX"], [dated, unterminated, simple_message(3)])
    rig.seed(dst, ["INBOX"], [(dated, (), dt(30)),  # the same bytes, another date
                              (unterminated + b"\r\n", (), dt(0)),  # as POP3 serves it; the date of its Date:
                              simple_message(4)])  # not from this source
    res, report = pop3_run(src, dst, tmp_path, "s.sqlite", "dry", "--dry-run")
    assert res.code == 0, res.text
    assert (report["totals"]["to_copy"], report["totals"]["found_on_destination"]) == (1, 2), res.text
    assert message_count(dst) == 3

    res, report = pop3_run(src, dst, tmp_path, "s.sqlite", "r")
    assert res.code == 1, res.text
    assert (report["totals"]["copied"], report["totals"]["found_on_destination"]) == (1, 1), res.text
    assert [f["reason"][:68] for f in report["failures"]] == [
        "the destination already holds the message with another INTERNALDATE "], res.text
    assert message_count(dst) == 4
    verified = verify_pop3(src, dst)["folders"][0]
    assert [(d["source_date"], d["destination_date"]) for d in verified["date_differs"]] == [
        ("02-Jun-2020 10:11:12 +0200", "13-Apr-2019 13:09:26 +0000")], verified
    assert len(verified["extra"]) == 1 and not verified["missing"]  # simple_message(4)
