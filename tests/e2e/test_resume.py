"""Never lose, never duplicate (issue 4): crash, cut, restart, reset, lose the state, rerun -> identical.

Every scenario ends with `migrator verify` = identical and rig.snapshot(src) == rig.snapshot(dst)
(sorted lists of (sha256, flags, date) per folder: a multiset comparison, so a duplicate fails it).
Faults come from the real world where possible: SIGKILL of the real CLI process (at named points
of the engine via MIGRATOR_TEST_CRASH_AT, or from the proxy while bytes of a FETCH / APPEND are in
flight), a TCP proxy cutting connections (tests/faultproxy.py), Dovecot restarted or its sessions
killed, UIDVALIDITY forced to change with doveadm, the state file deleted.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import rig
from tests.faultproxy import FaultProxy, wait_until
from tests.helpers import Result, dt, interruptible, migrator, multiset, simple_message

pytestmark = pytest.mark.e2e

FLAGS = [(), ("\\Seen",), ("\\Seen", "\\Flagged"), ("\\Answered", "$Forwarded")]


# -- helpers ---------------------------------------------------------------------------------------


def tricky_messages(n: int = 60, size: int = 4000) -> list[tuple]:
    """Messages of varied sizes plus the hard cases for matching by content."""
    msgs = [(simple_message(i, body="x" * (size + (i * 397) % size)), FLAGS[i % 4], dt(i)) for i in range(n)]
    dup = simple_message(900, body="exact duplicate " * 200)
    no_id = simple_message(901, msgid=False, body="no message-id " * 150)
    msgs += [(dup, (), dt(1)), (dup, (), dt(1)), (dup, ("\\Seen",), dt(2))]  # identical bytes, three times
    msgs += [(no_id, (), dt(3)), (no_id, ("\\Seen",), dt(3))]  # no Message-ID, twice
    # Two different messages sharing one Message-ID (same size: only the bytes tell them apart).
    msgs += [(simple_message(902, body="version A " * 100), (), dt(4)),
             (simple_message(902, body="version B " * 100), (), dt(4))]
    return msgs


def seed_source(account, n: int = 60, size: int = 4000) -> None:
    rig.seed(account, ["INBOX"], tricky_messages(n, size))
    rig.seed(account, ["Work", "Projects"], [(simple_message(500 + i, body="w" * 3000), FLAGS[i % 4], dt(i))
                                             for i in range(12)])
    rig.create_folder(account, ["Empty"])


def via(account, proxy: FaultProxy):
    """The same account, reached through the proxy."""
    return dataclasses.replace(account, port=proxy.port)


def cli_args(src, dst, state: Path, report: Path, *extra: str) -> list[str]:
    return ["migrate", src.url, dst.url, "--state", str(state), "--report", str(report), "--quiet",
            "--workers", "2", "--batch-mb", "0.1", *extra]


def run(src, dst, tmp_path: Path, *extra: str, env: dict | None = None, name: str = "report") -> tuple[Result, dict]:
    report = tmp_path / f"{name}.json"
    report.unlink(missing_ok=True)
    res = migrator(*cli_args(src, dst, tmp_path / "state.sqlite", report, *extra), src=src, dst=dst, env=env)
    return res, (json.loads(report.read_text()) if report.exists() else {})


def popen(src, dst, tmp_path: Path, *extra: str, env: dict | None = None) -> subprocess.Popen:
    full = {k: v for k, v in os.environ.items() if not k.startswith("MIGRATOR_")}
    full.update(src.env("src"))
    full.update(dst.env("dst"))
    full.update(env or {})
    args = cli_args(src, dst, tmp_path / "state.sqlite", tmp_path / "report-bg.json", *extra)
    return subprocess.Popen([sys.executable, "-m", "migrator", *args], env=full, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=interruptible)


def assert_identical(src, dst) -> None:
    res = migrator("verify", src.url, dst.url, src=src, dst=dst)
    assert res.code == 0 and "Identical." in res.out, res.text
    assert rig.snapshot(dst) == rig.snapshot(src)


def finish(src, dst, tmp_path: Path, *extra: str, runs: int = 3) -> dict:
    """Rerun (bounded) until a run ends with exit 0; return its report."""
    for i in range(runs):
        res, report = run(src, dst, tmp_path, *extra, name=f"finish{i}")
        if res.code == 0:
            return report
    raise AssertionError(f"no clean run after {runs} reruns: {res.text}")


def status_item(account, item: str, folder=("INBOX",)) -> int:
    c = rig.connect(account)
    try:
        return c.folder_status(rig.folder_name(account, folder), [item])[item.encode()]
    finally:
        c.logout()


def message_count(account, folder=("INBOX",)) -> int:
    return status_item(account, "MESSAGES", folder)


def uidvalidity(account, folder=("INBOX",)) -> int:
    return status_item(account, "UIDVALIDITY", folder)


def reset_uidvalidity(account, folder=("INBOX",)) -> None:
    """Force a new UIDVALIDITY on a maildir folder (see ../shared/notes/dovecot.md)."""
    dovecot = account.dovecot
    before = uidvalidity(account, folder)
    path = dovecot.mail_dir / account.user
    if tuple(folder) != ("INBOX",):
        path = path / ("." + ".".join(folder))  # Maildir++: '.'-separated directories
    for _ in range(3):  # UIDVALIDITY is time based: a reset within the same second may give it again
        dovecot.kill_sessions(account.user)
        for f in [path / "dovecot-uidlist", *map(Path, glob.glob(str(path / "dovecot.index*")))]:
            f.unlink(missing_ok=True)
        dovecot.doveadm("force-resync", "-u", account.user, rig.folder_name(account, folder))
        if uidvalidity(account, folder) != before:
            return
        time.sleep(1.1)
    raise AssertionError("UIDVALIDITY did not change")


def change_flags(account, folder, add=(), remove=(), count=3) -> None:
    c = rig.connect(account)
    try:
        c.select_folder(rig.folder_name(account, folder))
        uids = sorted(c.search("ALL"))[:count]
        if add:
            c.add_flags(uids, list(add))
        if remove:
            c.remove_flags(uids, list(remove))
    finally:
        c.logout()


@pytest.fixture(scope="module")
def source(dovecot_slash):
    """One seeded source per module (per xdist worker): only read by the tests that share it."""
    account = dovecot_slash.new_user("rsrc")
    seed_source(account)
    return account


# -- kill -9 at 20+ points ---------------------------------------------------------------------------

# Each entry: the crash points of successive runs (one kill per run), then a clean run must finish.
CRASHES = [
    ("march-listed:1",), ("march-listed:2",), ("pool-fetched:1",), ("pool-fetched:3",),
    ("fetched:1",), ("fetched:2",), ("fetched:4",),
    ("intent-written:1",), ("intent-written:2",), ("intent-written:5",),
    ("append-sent:1",), ("append-sent:2",), ("append-sent:4",), ("append-sent:5",),
    ("confirmed:1",), ("confirmed:3",), ("confirmed:5",), ("end-deferred:1",), ("end-deferred:2",),
    ("append-sent:3", "adopted:1"), ("append-sent:2", "march-listed:1"), ("intent-written:3", "append-sent:2"),
    ("append-sent:5", "pool-fetched:1", "fetched:1"),
]


@pytest.mark.parametrize("points", CRASHES, ids=["+".join(p) for p in CRASHES])
def test_sigkill_at_a_named_point_then_rerun(source, new_account, tmp_path, points):
    dst = new_account("slash", "rdst")
    for point in points:
        res, _ = run(source, dst, tmp_path, env={"MIGRATOR_TEST_CRASH_AT": point})
        assert res.code == -signal.SIGKILL, f"{point} was not reached: {res.text}"
    report = finish(source, dst, tmp_path)
    if points[-1].startswith("append-sent"):
        # Stored by the server, never confirmed: found by fingerprint, not copied twice.
        assert report["totals"]["found_on_destination"] >= 1
    assert_identical(source, dst)


def test_sigkill_while_flags_are_synced_and_while_extras_are_deleted(source, new_account, tmp_path):
    dst = new_account("slash", "rdst")
    assert run(source, dst, tmp_path)[0].code == 0
    change_flags(dst, ["INBOX"], remove=["\\Seen"], count=10)  # out of step: the rerun sets them again
    rig.seed(dst, ["INBOX"], [simple_message(7000 + i) for i in range(3)])  # extras for mirror mode
    res, _ = run(source, dst, tmp_path, env={"MIGRATOR_TEST_CRASH_AT": "flags-set:2"})
    assert res.code == -signal.SIGKILL, res.text
    res, _ = run(source, dst, tmp_path, "--delete-extra", env={"MIGRATOR_TEST_CRASH_AT": "expunged:1"})
    assert res.code == -signal.SIGKILL, res.text
    report = finish(source, dst, tmp_path, "--delete-extra")
    assert report["totals"]["copied"] == 0
    assert_identical(source, dst)


@pytest.mark.parametrize("side, direction, at, extra", [
    ("src", "down", 20_000, ()), ("src", "down", 110_000, ()),  # in the middle of a FETCH response
    ("dst", "up", 30_000, ()), ("dst", "up", 120_000, ()),  # in the middle of an APPEND literal
    ("dst", "up", 3_000, ("--compress",)),  # in the middle of a compressed APPEND (~6 KB in all)
])
def test_sigkill_while_bytes_are_in_flight(source, new_account, tmp_path, side, direction, at, extra):
    dst = new_account("slash", "rdst")
    box: dict = {}

    def kill():
        os.kill(box["proc"].pid, signal.SIGKILL)

    target = source if side == "src" else dst
    with FaultProxy(target.port, cut_at=[at], direction=direction, on_threshold=kill) as proxy:
        s, d = (via(source, proxy), dst) if side == "src" else (source, via(dst, proxy))
        box["proc"] = popen(s, d, tmp_path, *extra)
        box["proc"].communicate(timeout=120)
        assert box["proc"].returncode == -signal.SIGKILL
        assert proxy.thresholds_left == 0
    finish(source, dst, tmp_path, *extra)
    assert_identical(source, dst)


# -- cut connections ----------------------------------------------------------------------------------


@pytest.mark.parametrize("side, direction, cuts", [
    ("dst", "up", [40_000, 90_000, 160_000]),
    ("dst", "down", [3_000, 6_000]),
    ("src", "down", [30_000, 80_000, 150_000]),
    # Commands to the source are short (about 900 bytes in all) and where a byte count lands among
    # them depends on how the workers interleave: a count once fell on a connection being logged
    # out, which needs no retry. So this case cuts on what is sent: the copy's body FETCH, twice.
    ("src", "up", b"BODY.PEEK[]"),
])
def test_connections_cut_in_the_copy_are_retried(source, new_account, tmp_path, side, direction, cuts):
    dst = new_account("slash", "rdst")
    target = source if side == "src" else dst
    faults = ({"cut_up_when": lambda data: cuts in data, "cut_up_times": 2} if isinstance(cuts, bytes)
              else {"cut_at": cuts, "direction": direction})
    with FaultProxy(target.port, **faults) as proxy:
        s, d = (via(source, proxy), dst) if side == "src" else (source, via(dst, proxy))
        res, report = run(s, d, tmp_path)
        assert proxy.cuts >= 1
    # A cut while planning ends the run (exit 1 or 3, nothing half done); in the copy it is retried.
    if res.code != 0:
        assert res.code in (1, 3), res.text
        report = finish(source, dst, tmp_path)
    else:
        assert any("retrying" in w for w in report["warnings"]), report["warnings"]
    assert_identical(source, dst)


def test_a_cut_while_a_folder_ends_with_the_next_ones_select_retries_both(new_account, tmp_path):
    """With one worker, a small folder's size check and STATUS go out with the next folder's
    SELECT (one round trip). The connection is cut with that batch unsent, twice: both folders
    are marched again each time, the first one's copies are found by the checkpoint, not
    copied twice, and the run still ends complete, with watermarks a rerun can use."""
    src, dst = new_account("slash", "csrc"), new_account("slash", "cdst")
    for f in range(4):
        rig.seed(src, ["Box", f"f{f}"], [(simple_message(f * 100 + i), FLAGS[i % 4], dt(i)) for i in range(3)])

    def end_with_select(data: bytes) -> bool:
        return b" STATUS " in data and b" SELECT " in data

    with FaultProxy(dst.port, cut_up_when=end_with_select, cut_up_times=2) as proxy:
        res, report = run(src, via(dst, proxy), tmp_path, "--workers", "1", "--batch-mb", "8")
        assert proxy.cuts == 2
    assert res.code == 0, res.text
    retried = [w for w in report["warnings"] if "retrying" in w]
    assert len({w.split("'")[1] for w in retried}) >= 2, retried  # the ending folder and the next one
    assert report["totals"]["copied"] == 12, report["totals"]
    assert_identical(src, dst)
    again, report = run(src, dst, tmp_path, "--workers", "1", name="again")
    assert again.code == 0 and report["totals"]["already_copied"] == 12 and report["totals"]["copied"] == 0


@pytest.mark.parametrize("seed, extra", [(1, ()), (2, ()), (3, ()), (4, ("--compress",))])
def test_random_cuts_on_both_sides(source, new_account, tmp_path, seed, extra):
    """--compress too: a cut in the middle of a deflate stream is a lost connection like any other."""
    dst = new_account("slash", "rdst")
    with FaultProxy(source.port, random_cuts=3, random_every=(0.05, 0.5), seed=seed, rst=True) as sp, \
            FaultProxy(dst.port, random_cuts=3, random_every=(0.05, 0.5), seed=seed + 100) as dp:
        s, d = via(source, sp), via(dst, dp)
        for i in range(4):  # bounded: a cut during planning ends a run; the next one resumes
            res, _ = run(s, d, tmp_path, *extra, name=f"r{i}")
            if res.code == 0:
                break
            assert res.code in (1, 3), res.text
    finish(source, dst, tmp_path)
    assert_identical(source, dst)


def test_retry_limit_then_exit_1_with_resumable_state(source, new_account, tmp_path):
    dst = new_account("slash", "rdst")
    # Every connection is cut after 15 kB sent: no APPEND batch (~100 kB) ever gets through.
    with FaultProxy(dst.port, cut_at=[15_000], direction="up", per_connection=True) as proxy:
        started = time.monotonic()
        res, report = run(source, via(dst, proxy), tmp_path)
        elapsed = time.monotonic() - started
    assert res.code == 1, res.text
    gave_up = [f for f in report["folder_errors"] if "gave up after 6 attempts" in f["reason"]]
    assert gave_up and "rerun" in gave_up[0]["reason"]
    assert elapsed < 60 and proxy.cuts >= 6
    db = sqlite3.connect(tmp_path / "state.sqlite")  # the cut APPENDs left their intents behind
    pending = db.execute("SELECT count(*) FROM messages WHERE status='pending'").fetchone()[0]
    db.close()
    assert pending > 0
    report = finish(source, dst, tmp_path)
    assert report["totals"]["copied"] == sum(len(v) for v in rig.snapshot(source).values())
    assert_identical(source, dst)


# -- the server goes away --------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["restart", "kill_sessions"])
def test_dovecot_restarted_mid_run(new_account, tmp_path, how):
    src, dst = new_account("slash", "rsrc"), new_account("slash", "rdst")
    seed_source(src)

    def strike():
        dovecot = dst.dovecot
        if how == "restart":
            dovecot.restart()
        else:
            dovecot.kill_sessions(dst.user)
            dovecot.kill_sessions(src.user)

    # The proxy fires once APPENDs are under way: the whole instance (both sides) goes down then.
    with FaultProxy(dst.port, cut_at=[60_000], direction="up", on_threshold=strike) as proxy:
        res, report = run(src, via(dst, proxy), tmp_path)
        assert proxy.thresholds_left == 0
    if res.code != 0:
        assert res.code == 1, res.text
        finish(src, dst, tmp_path)
    else:
        assert any("retrying" in w for w in report["warnings"]), report
    assert_identical(src, dst)


# -- state that cannot be trusted ------------------------------------------------------------------------


@pytest.mark.parametrize("side", ["source", "destination"])
def test_uidvalidity_reset_between_runs(new_account, tmp_path, side):
    src, dst = new_account("slash", "rsrc"), new_account("slash", "rdst")
    seed_source(src)
    assert run(src, dst, tmp_path)[0].code == 0
    total = message_count(src)
    reset_uidvalidity(src if side == "source" else dst)
    rig.seed(src, ["INBOX"], [(simple_message(8000, body="new after reset"), (), dt(9))])
    change_flags(src, ["INBOX"], add=["$Label1"], count=2)
    res, report = run(src, dst, tmp_path)
    assert res.code == 0, res.text
    inbox = report["folders"]["INBOX"]
    assert inbox["copied"] == 1 and inbox["found_on_destination"] == total  # matched by content
    assert inbox["flags_updated"] == 2
    assert_identical(src, dst)


def test_state_file_deleted_between_runs(source, new_account, tmp_path):
    dst = new_account("slash", "rdst")
    res, _ = run(source, dst, tmp_path, env={"MIGRATOR_TEST_CRASH_AT": "confirmed:4"})
    assert res.code == -signal.SIGKILL
    on_dst = sum(len(v) for v in rig.snapshot(dst).values())
    for f in glob.glob(str(tmp_path / "state.sqlite*")):
        os.remove(f)
    res, report = run(source, dst, tmp_path)
    assert res.code == 0, res.text
    assert report["totals"]["found_on_destination"] == on_dst
    assert_identical(source, dst)


def test_first_run_into_a_non_empty_destination_and_mirror_mode(source, new_account, tmp_path):
    dst = new_account("slash", "rdst")
    msgs = tricky_messages()
    # Part of the source already there (one of the three duplicates, other flags) + two foreign messages.
    rig.seed(dst, ["INBOX"], [(raw, ("\\Seen",), date) for raw, _f, date in msgs[::3]]
             + [simple_message(9100), simple_message(9101)])
    res, report = run(source, dst, tmp_path)
    assert res.code == 0, res.text
    inbox = report["folders"]["INBOX"]
    assert inbox["found_on_destination"] == len(msgs[::3])
    assert inbox["copied"] == len(msgs) - len(msgs[::3])
    verify = migrator("verify", source.url, dst.url, "--json", src=source, dst=dst)
    extra = [e for f in json.loads(verify.out)["folders"] for e in f["extra"]]
    assert verify.code == 1 and len(extra) == 2  # never deleted without --delete-extra

    res, preview = run(source, dst, tmp_path, "--delete-extra", "--dry-run", name="preview")
    assert res.code == 0, res.text
    assert preview["totals"]["deleted_extra"] == 2 and preview["totals"]["to_copy"] == 0
    assert message_count(dst) == len(msgs) + 2  # the preview changed nothing

    res, report = run(source, dst, tmp_path, "--delete-extra")
    assert res.code == 0 and report["totals"]["deleted_extra"] == 2, res.text
    assert_identical(source, dst)


def test_destination_over_quota_then_resume(new_account, tmp_path):
    src, dst = new_account("slash", "rsrc"), new_account("slash", "rdst", quota="300k")
    seed_source(src, n=60, size=8000)
    res, report = run(src, dst, tmp_path)
    assert res.code == 1, res.text
    assert report["failures"] and all("OVERQUOTA" in f["reason"] for f in report["failures"])
    assert any("over quota" in w and "--retry-failed" in w for w in report["warnings"])
    assert "OVERQUOTA" in res.out and "Traceback" not in res.text
    failed = report["totals"]["failed"]

    rig.set_quota(dst, None)
    res, report = run(src, dst, tmp_path)  # permanent failures are not retried by themselves
    assert res.code == 1 and report["totals"]["copied"] == 0 and report["totals"]["failed"] == failed
    assert all("--retry-failed" in f["reason"] for f in report["failures"])
    res, report = run(src, dst, tmp_path, "--retry-failed")
    assert res.code == 0, res.text
    assert report["totals"]["copied"] == failed
    assert_identical(src, dst)


# -- the user stops it, or gets it wrong ---------------------------------------------------------------


def test_ctrl_c_stops_within_seconds_and_says_how_to_resume(new_account, tmp_path):
    src, dst = new_account("slash", "rsrc"), new_account("slash", "rdst")
    seed_source(src, n=150, size=8000)
    with FaultProxy(dst.port) as proxy:
        proc = popen(src, via(dst, proxy), tmp_path)
        assert wait_until(lambda: proxy.bytes["up"] > 100_000, timeout=60)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        stopped = time.monotonic() - sent
    assert proc.returncode == 130, out + err
    assert stopped < 5, stopped
    assert "run the same command again to resume" in err and "Traceback" not in err
    report = finish(src, dst, tmp_path)
    assert report["totals"]["already_copied"] + report["totals"]["found_on_destination"] > 0
    assert_identical(src, dst)


def test_two_processes_on_one_state_the_second_refuses(source, new_account, tmp_path):
    dst = new_account("slash", "rdst")
    box: dict = {}
    # The first run holds the lock while its APPENDs stall in the paused proxy.
    with FaultProxy(dst.port, cut_at=[30_000], direction="up", on_threshold=lambda: box["p"].pause()) as proxy:
        box["p"] = proxy
        first = popen(source, via(dst, proxy), tmp_path)
        assert wait_until(lambda: proxy.thresholds_left == 0, timeout=60)
        second, _ = run(source, dst, tmp_path, name="second")
        proxy.resume()
        out, err = first.communicate(timeout=120)
    assert second.code == 2 and "in use by another migrator process" in second.err, second.text
    assert first.returncode == 0, out + err
    assert_identical(source, dst)


@pytest.mark.parametrize("kind", ["garbage", "foreign-sqlite", "other-migration"])
def test_corrupt_or_foreign_state_file(source, new_account, tmp_path, kind):
    dst = new_account("slash", "rdst")
    state = tmp_path / "state.sqlite"
    if kind == "garbage":
        state.write_bytes(os.urandom(4096))
    elif kind == "foreign-sqlite":
        db = sqlite3.connect(state)
        db.execute("CREATE TABLE notes (x)")
        db.commit()
        db.close()
    else:
        other = new_account("slash", "rdst")
        assert run(source, other, tmp_path)[0].code == 0
    res, _ = run(source, dst, tmp_path)
    assert res.code == 2, res.text
    assert "--reset-state" in res.err and "Traceback" not in res.text
    assert len([line for line in res.err.splitlines() if line.strip()]) == 1
    res, _ = run(source, dst, tmp_path, "--reset-state")
    assert res.code == 0, res.text
    assert_identical(source, dst)


# -- reruns keep the destination in step, fast ---------------------------------------------------------


def test_flags_changed_on_the_source_are_synced_unless_told_not_to(new_account, tmp_path):
    src, dst = new_account("slash", "rsrc"), new_account("slash", "rdst")
    seed_source(src)
    assert run(src, dst, tmp_path)[0].code == 0
    change_flags(src, ["Work", "Projects"], add=["\\Flagged", "$Label2"], remove=["\\Seen"], count=5)

    res, report = run(src, dst, tmp_path, "--no-sync-flags")
    assert res.code == 0 and report["totals"]["flags_updated"] == 0
    assert migrator("verify", src.url, dst.url, src=src, dst=dst).code == 1  # flags differ, as asked

    res, report = run(src, dst, tmp_path)
    assert res.code == 0 and report["totals"]["flags_updated"] == 5, res.text
    assert_identical(src, dst)


def test_fast_rerun_skips_unchanged_folders_but_sees_every_change(new_account, tmp_path):
    src, dst = new_account("slash", "rsrc"), new_account("slash", "rdst")
    seed_source(src, n=300, size=1000)
    assert run(src, dst, tmp_path)[0].code == 0
    total = sum(len(v) for v in rig.snapshot(src).values())

    def rerun(*extra):
        with FaultProxy(src.port) as proxy:
            res, report = run(via(src, proxy), dst, tmp_path, *extra)
            return res, report, proxy.bytes["down"]

    res, report, fast = rerun()
    assert res.code == 0 and report["totals"]["already_copied"] == total, report
    res, report, full = rerun("--no-sync-flags")  # other options: the watermarks do not apply
    assert res.code == 0 and report["totals"]["already_copied"] == total
    assert fast * 3 < full, (fast, full)  # a skipped folder is not listed: a few STATUS lines only

    change_flags(src, ["INBOX"], add=["$Label3"], count=1)  # raises HIGHESTMODSEQ only
    res, report, _ = rerun()
    assert report["totals"]["flags_updated"] == 1, report
    rig.seed(src, ["Work", "Projects"], [simple_message(9500)])
    res, report, _ = rerun()
    assert report["totals"]["copied"] == 1, report
    c = rig.connect(dst)  # someone deletes a message on the destination: it comes back
    try:
        c.select_folder("INBOX")
        c.delete_messages(sorted(c.search("ALL"))[:1])
        c.expunge()
    finally:
        c.logout()
    res, report, _ = rerun()
    assert report["totals"]["copied"] == 1, report
    assert_identical(src, dst)


def _without_uidplus(data: bytes) -> bytes:
    return re.sub(rb"\[APPENDUID [^\]]*\] ?", b"", data.replace(b" UIDPLUS", b""))


def test_copies_confirmed_without_a_uid_are_found_again_by_fingerprint(source, new_account, tmp_path):
    """A destination without UIDPLUS gives no UID for an APPEND: the state then keeps the copy's
    SHA-256, and the next run finds each copy by it. A rerun with --delete-extra must therefore
    see no extras (without the fingerprint it would delete every copy) and copy nothing again."""
    dst = new_account("slash", "rdst")
    with FaultProxy(dst.port, rewrite_down=_without_uidplus) as proxy:
        res, report = run(source, via(dst, proxy), tmp_path)
        assert res.code == 0, res.text
        assert_identical(source, dst)
        copied = report["totals"]["copied"]
        res, report = run(source, via(dst, proxy), tmp_path, "--delete-extra", name="rerun")
    assert res.code == 0, res.text
    assert report["totals"]["copied"] == 0 and report["totals"].get("deleted_extra", 0) == 0, report["totals"]
    assert report["totals"]["already_copied"] == copied > 0
    assert_identical(source, dst)


# -- exact duplicates with different INTERNALDATEs ------------------------------------------------------


TWIN = simple_message(950, body="the same bytes, three times " * 11_000)  # ~300 kB: one per batch, two per chunk
TWINS = [(TWIN, (), dt(0)), (TWIN, ("\\Seen",), dt(1)), (TWIN, ("\\Flagged", "\\Seen"), dt(2))]


@pytest.mark.parametrize("held", [1, 2])
def test_twins_are_paired_by_date_however_batches_and_chunks_split_them(new_account, tmp_path, held):
    """Three byte-identical source messages, three INTERNALDATEs; the destination already holds the
    `held` later ones (other flags). Batches of 0.1 MB put each twin in its own batch, and the folder
    is cut into two chunks copied by two workers: each held copy must be adopted by the source twin
    of its date (flags then set as on the source), the others appended. The first twin in UID order
    taking whatever copy came first would leave one date twice and another missing."""
    src, dst = new_account("slash", "tsrc"), new_account("slash", "tdst")
    fillers = [(simple_message(960 + i, body="f" * 2000), (), dt(5 + i)) for i in range(4)]
    rig.seed(src, ["INBOX"], [fillers[0], TWINS[0], fillers[1], TWINS[1], fillers[2], TWINS[2], fillers[3]])
    rig.seed(dst, ["INBOX"], [(raw, ("$Other",), date) for raw, _flags, date in TWINS[3 - held:]])
    expected = multiset(rig.snapshot(src)[("INBOX",)])

    res, preview = run(src, dst, tmp_path, "--dry-run", name="preview")
    assert res.code == 0, res.text
    assert preview["totals"]["found_on_destination"] == held, preview["totals"]
    res, report = run(src, dst, tmp_path)
    assert res.code == 0, res.text
    assert report["totals"]["found_on_destination"] == held, report["totals"]
    assert report["totals"]["copied"] == 7 - held, report["totals"]
    assert multiset(rig.snapshot(dst)[("INBOX",)]) == expected
    assert_identical(src, dst)

    # The state lost: every copy is in the pool, and each twin must find the one of its date again.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    res, report = run(src, dst, fresh)
    assert res.code == 0, res.text
    assert report["totals"]["copied"] == 0 and report["totals"]["found_on_destination"] == 7, report["totals"]
    assert multiset(rig.snapshot(dst)[("INBOX",)]) == expected
    assert_identical(src, dst)


TWIN_CRASHES = [("fetched:1",), ("adopted:1",), ("append-sent:2",), ("confirmed:3",), ("append-sent:1", "adopted:1")]


@pytest.mark.parametrize("points", TWIN_CRASHES, ids=["+".join(p) for p in TWIN_CRASHES])
def test_twins_killed_while_fingerprinted_adopted_or_appended_then_rerun(new_account, tmp_path, points):
    """kill -9 while twins are fingerprinted, adopted or appended: an appended twin left unconfirmed
    carries its own date, and the rerun must pair it with the twin of that date, not the first one."""
    src, dst = new_account("slash", "tsrc"), new_account("slash", "tdst")
    rig.seed(src, ["INBOX"], [TWINS[0], (simple_message(961, body="f" * 2000), (), dt(6)), TWINS[1], TWINS[2]])
    rig.seed(dst, ["INBOX"], [(TWIN, ("$Other",), dt(2))])
    for point in points:
        res, _ = run(src, dst, tmp_path, env={"MIGRATOR_TEST_CRASH_AT": point})
        assert res.code == -signal.SIGKILL, f"{point} was not reached: {res.text}"
    finish(src, dst, tmp_path)
    assert_identical(src, dst)
