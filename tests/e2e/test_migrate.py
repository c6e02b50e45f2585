"""migrator migrate, end to end, against real Dovecot (issue: migrate end to end)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from tests import rig
from tests.helpers import dt, migrate, migrator, multiset, simple_message

pytestmark = pytest.mark.e2e


def test_corpus_arrives_identical_with_flags_keywords_and_dates(src_account, dst_account, tmp_path):
    """Every message of the shared corpus, spread over folders with flags, keywords and dates."""
    corpus = rig.corpus_messages()
    assert len(corpus) > 1000
    flag_sets = [(), ("\\Seen",), ("\\Seen", "\\Flagged"), ("\\Answered", "$Forwarded"),
                 ("\\Draft", "NonJunk", "$Label1")]
    by_folder: dict[tuple, list] = {}
    for i, (path, raw) in enumerate(corpus):
        folder = ("INBOX",) if i % 3 == 0 else ("Corpus", path.split("/")[0])
        by_folder.setdefault(folder, []).append((raw, flag_sets[i % len(flag_sets)], dt(i % 400, tz_hours=(i % 5) - 2)))
    for folder, msgs in by_folder.items():
        rig.seed(src_account, list(folder), msgs)
    before = rig.snapshot(src_account)

    res, report = migrate(src_account, dst_account, tmp_path, "--workers", "3")
    after = rig.snapshot(dst_account)

    assert set(after) >= set(before)
    differing = 0
    for folder, items in before.items():
        missing = multiset(items) - multiset(after[folder])
        extra = multiset(after[folder]) - multiset(items)
        assert sum(extra.values()) == sum(missing.values())  # an altered copy replaces, never adds
        differing += sum(missing.values())
    # Whatever does not arrive identical is reported, with its reason, and the exit code says so.
    altered = [f for f in report["failures"] if "changed the message" in f["reason"]]
    assert differing == len(altered) == report["totals"]["failed"]
    assert res.code == (1 if differing else 0), res.text
    assert report["totals"]["copied"] + len(altered) == sum(len(v) for v in before.values())


def test_slash_to_dot_prefix_and_back(new_account, tmp_path):
    slash_src, dot, slash_back = new_account("slash"), new_account("dot"), new_account("slash")
    folders = {
        ("INBOX",): 3,
        ("Archive",): 2,
        ("Archive", "2020"): 2,
        ("Archive", "2020", "Q1"): 1,
        ("Sent Items",): 2,
        ("Éléments envoyés",): 1,
        ("Отправленные",): 1,
        ("Empty",): 0,
        ("Parent", "Child"): 1,
    }
    n = 0
    for folder, count in folders.items():
        if count == 0:
            rig.create_folder(slash_src, list(folder))
        else:
            rig.seed(slash_src, list(folder), [(simple_message(n + k), ("\\Seen",), dt(n + k)) for k in range(count)])
        n += count
    before = rig.snapshot(slash_src)

    res, _ = migrate(slash_src, dot, tmp_path / "a")
    assert res.code == 0, res.text
    assert rig.snapshot(dot) == before
    dot_names = {name for name in _raw_names(dot)}
    assert "INBOX.Archive.2020.Q1" in dot_names and "INBOX.Empty" in dot_names

    res, _ = migrate(dot, slash_back, tmp_path / "b")
    assert res.code == 0, res.text
    assert rig.snapshot(slash_back) == before
    assert "Archive/2020/Q1" in set(_raw_names(slash_back))


def _raw_names(account) -> list[str]:
    c = rig.connect(account)
    try:
        return [name for _flags, _d, name in c.list_folders()]
    finally:
        c.logout()


def test_exact_duplicates_and_no_message_id_are_kept(src_account, dst_account, tmp_path):
    dup = simple_message(1)
    no_id = simple_message(2, msgid=False)
    rig.seed(src_account, ["INBOX"], [(dup, (), dt(1)), (dup, (), dt(1)), (dup, ("\\Seen",), dt(1)),
                                      (no_id, (), dt(2)), (no_id, (), dt(2))])
    res, report = migrate(src_account, dst_account, tmp_path)
    assert res.code == 0, res.text
    assert report["totals"]["copied"] == 5
    assert rig.snapshot(dst_account) == rig.snapshot(src_account)


def test_rerun_copies_nothing_and_new_mail_is_added(src_account, dst_account, tmp_path):
    rig.seed(src_account, ["INBOX"], [simple_message(i) for i in range(20)])
    rig.seed(src_account, ["Work"], [simple_message(100 + i) for i in range(5)])
    res, first = migrate(src_account, dst_account, tmp_path)
    assert res.code == 0 and first["totals"]["copied"] == 25

    res, second = migrate(src_account, dst_account, tmp_path)
    assert res.code == 0, res.text
    assert second["totals"]["copied"] == 0
    assert second["totals"]["already_copied"] == 25

    rig.seed(src_account, ["Work"], [simple_message(200)])
    res, third = migrate(src_account, dst_account, tmp_path)
    assert third["totals"]["copied"] == 1
    assert rig.snapshot(dst_account) == rig.snapshot(src_account)


def test_deleted_messages_are_skipped_and_counted_unless_asked(src_account, dst_account, new_account, tmp_path):
    rig.seed(src_account, ["INBOX"], [(simple_message(1), ("\\Deleted",), dt(1)), (simple_message(2), (), dt(2))])
    res, report = migrate(src_account, dst_account, tmp_path / "a")
    assert res.code == 0
    assert report["totals"]["copied"] == 1
    assert sum(report["totals"]["skipped"].values()) == 1
    assert len(rig.snapshot(dst_account)[("INBOX",)]) == 1

    other = new_account("slash")
    res, report = migrate(src_account, other, tmp_path / "b", "--include-deleted")
    assert res.code == 0 and report["totals"]["copied"] == 2
    assert rig.snapshot(other) == rig.snapshot(src_account)


def test_verify_finds_missing_extra_flag_and_date_differences(src_account, dst_account, tmp_path):
    msgs = [(simple_message(i), ("\\Seen",), dt(i)) for i in range(6)]
    rig.seed(src_account, ["INBOX"], msgs)
    res, _ = migrate(src_account, dst_account, tmp_path)
    assert res.code == 0

    ok = migrator("verify", src_account.url, dst_account.url, src=src_account, dst=dst_account)
    assert ok.code == 0, ok.text
    assert "Identical." in ok.out

    c = rig.connect(dst_account)
    try:
        c.select_folder("INBOX")
        uids = sorted(c.search("ALL"))
        c.delete_messages([uids[0]])  # missing
        c.expunge()
        c.remove_flags([uids[1]], ["\\Seen"])  # flag changed
        # date changed: replace message 3 by the same bytes with another date
        body = c.fetch([uids[2]], ["BODY.PEEK[]"])[uids[2]][b"BODY[]"]
        c.delete_messages([uids[2]])
        c.expunge()
        c.multiappend("INBOX", [{"msg": body, "flags": ("\\Seen",), "date": dt(300)}])
        c.multiappend("INBOX", [{"msg": simple_message(999), "flags": (), "date": dt(1)}])  # extra
    finally:
        c.logout()

    res = migrator("verify", src_account.url, dst_account.url, "--json", src=src_account, dst=dst_account)
    assert res.code == 1
    out = json.loads(res.out)
    inbox = next(f for f in out["folders"] if f["source"] == "INBOX")
    assert len(inbox["missing"]) == 1
    assert len(inbox["extra"]) == 1
    assert len(inbox["flags_differ"]) == 1
    assert len(inbox["date_differs"]) == 1
    assert out["identical"] is False


def test_verify_compares_folders_in_parallel_and_reports_each_difference_in_its_folder(
        src_account, dst_account, tmp_path):
    """verify --workers 3: three connection pairs compare folders at the same time (a WAN verify
    took three times as long as the migration, one folder and one side after the other); each
    difference is still reported in its own folder, and a folder missing on the destination
    is all missing."""
    from benchmarks.proxy import DelayProxy

    for name in ("A", "B", "C", "D"):
        rig.seed(src_account, [name], [(simple_message(ord(name) * 10 + i), ("\\Seen",), dt(i)) for i in range(4)])
    res, _ = migrate(src_account, dst_account, tmp_path)
    assert res.code == 0, res.text
    c = rig.connect(dst_account)
    try:
        c.select_folder(rig.folder_name(dst_account, ["B"]))
        uids = sorted(c.search("ALL"))
        c.delete_messages([uids[0]])
        c.expunge()
        c.select_folder(rig.folder_name(dst_account, ["C"]))
        c.remove_flags([sorted(c.search("ALL"))[1]], ["\\Seen"])
        c.delete_folder(rig.folder_name(dst_account, ["D"]))
    finally:
        c.logout()
    with DelayProxy(src_account.port, rtt_ms=10) as sp, DelayProxy(dst_account.port, rtt_ms=10) as dp:
        res = migrator("verify", dataclasses.replace(src_account, port=sp.port).url,
                       dataclasses.replace(dst_account, port=dp.port).url, "--json", "--workers", "3",
                       src=src_account, dst=dst_account)
        connections = (sp.total, dp.total)
    assert res.code == 1, res.text
    # The planner's pair, then one pair per worker.
    assert connections == (4, 4), connections
    folders = {f["source"]: f for f in json.loads(res.out)["folders"]}
    assert [len(folders[n]["missing"]) for n in "ABCD"] == [0, 1, 0, 4]
    assert [len(folders[n]["flags_differ"]) for n in "ABCD"] == [0, 0, 1, 0]
    assert all(not folders[n]["extra"] and not folders[n]["date_differs"] for n in "ABCD")


def test_verify_and_migrate_do_not_touch_the_source(src_account, dst_account, tmp_path):
    rig.seed(src_account, ["INBOX"], [simple_message(i) for i in range(3)])  # unseen
    before = rig.snapshot(src_account)
    res, _ = migrate(src_account, dst_account, tmp_path)
    assert res.code == 0
    migrator("verify", src_account.url, dst_account.url, src=src_account, dst=dst_account)
    assert rig.snapshot(src_account) == before  # no \Seen set by FETCH


def test_progress_plain_lines_without_a_terminal_and_bars_on_one(src_account, dst_account, tmp_path):
    rig.seed(src_account, ["INBOX"], [simple_message(i, body="x" * 20000) for i in range(300)])
    res = migrator("migrate", src_account.url, dst_account.url, "--state", str(tmp_path / "s.sqlite"), "--workers", "1",
                   "--batch-mb", "0.1", src=src_account, dst=dst_account, env={"MIGRATOR_PROGRESS_INTERVAL": "0.05"})
    assert res.code == 0, res.text
    assert "progress: " in res.err and "messages" in res.err
    assert "Messages copied: 300" in res.out

    quiet = migrator("migrate", src_account.url, dst_account.url, "--state", str(tmp_path / "s.sqlite"), "--quiet",
                     src=src_account, dst=dst_account, env={"MIGRATOR_PROGRESS_INTERVAL": "0.05"})
    assert quiet.code == 0 and quiet.out == "" and quiet.err == ""

    # On a terminal: tqdm bars (run under a pseudo-terminal).
    import os
    import pty
    import subprocess
    import sys

    other = src_account.dovecot.new_user("tty")
    import fcntl
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a new pty is 0 columns wide
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIGRATOR_")}
    env.update(src_account.env("src"), **other.env("dst"))
    proc = subprocess.Popen([sys.executable, "-m", "migrator", "migrate", src_account.url, other.url, "--state",
                             str(tmp_path / "t.sqlite"), "--workers", "1", "--batch-mb", "0.1"],
                            stdin=slave, stdout=subprocess.PIPE, stderr=slave, env=env)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=120)
    os.close(master)
    screen = b"".join(chunks).decode("utf-8", "replace")
    assert proc.returncode == 0
    assert "messages" in screen and "msg/s" in screen and "%|" in screen


def test_altered_message_is_reported_even_if_the_run_died_before_its_size_check(src_account, dst_account, tmp_path):
    """Dovecot drops a trailing bare CR on APPEND: the copy differs, and that is reported, never hidden."""
    rig.seed(src_account, ["INBOX"], [simple_message(1) + b"\r\r"] + [simple_message(i) for i in range(2, 5)])
    assert rig.fetch_bodies(src_account, ["INBOX"])[0].endswith(b"\r")  # the source serves one bare CR
    res, _ = migrate(src_account, dst_account, tmp_path, "--workers", "1",
                     env={"MIGRATOR_TEST_CRASH_AT": "confirmed:1"})
    assert res.code == -9  # killed after confirming, before the per-folder size check

    res, report = migrate(src_account, dst_account, tmp_path)
    assert res.code == 1, res.text
    assert [f["uid"] for f in report["failures"]] == [1]
    assert "changed the message while storing it" in report["failures"][0]["reason"]
    assert len(rig.snapshot(dst_account)[("INBOX",)]) == 4  # kept, not duplicated

    res, report = migrate(src_account, dst_account, tmp_path, report="again.json")
    assert res.code == 1 and report["totals"]["copied"] == 0  # reported again, still not copied twice
    assert len(report["failures"]) == 1
