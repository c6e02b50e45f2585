"""batch at scale: per-host caps across the whole batch (counted where the server is), the batch
journal (finished mailboxes skipped, --retry-failed), and Ctrl-C / SIGTERM stopping cleanly."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from tests import rig
from tests.connwatch import ConnWatch
from tests.helpers import interruptible, migrator, simple_message

pytestmark = pytest.mark.e2e


def mailboxes(new_account, n: int, messages: int, prefix: str):
    pairs = [(new_account("slash", f"{prefix}s"), new_account("slash", f"{prefix}d")) for _ in range(n)]
    for i, (src, _dst) in enumerate(pairs):
        rig.seed(src, ["INBOX"], [simple_message(100 * i + k) for k in range(messages)])
    return pairs


def batch_file(tmp_path, pairs, port: int | None = None):
    """The CSV of `pairs`, every account reached through `port` (a proxy) when given."""
    def url(acc):
        return f"imap://{acc.user}@127.0.0.1:{port or acc.port}"

    path = tmp_path / "users.csv"
    path.write_text("source,destination\n" + "".join(f"{url(s)},{url(d)}\n" for s, d in pairs))
    return path


def master(dovecot) -> tuple[list[str], dict]:
    """Both sides logged in as Dovecot's master user: one password in the environment."""
    return (["--src-auth-user", dovecot.master_user, "--dst-auth-user", dovecot.master_user],
            {"MIGRATOR_SRC_PASSWORD": dovecot.master_password, "MIGRATOR_DST_PASSWORD": dovecot.master_password})


def identical(pairs) -> bool:
    return all(rig.snapshot(d)[("INBOX",)] == rig.snapshot(s)[("INBOX",)] for s, d in pairs)


def test_connections_per_host_hold_across_the_batch(dovecot_slash, new_account, tmp_path):
    """6 mailboxes, 6 at once, 2 workers each (4 connections a mailbox would like), one host
    capped at 3 connections: the server never sees more than 3 sessions at once."""
    pairs = mailboxes(new_account, 6, 8, "cap")
    auth, env = master(dovecot_slash)
    with ConnWatch(dovecot_slash.port) as watch:
        res = migrator("batch", str(batch_file(tmp_path, pairs, watch.port)), "--parallel", "6", "--workers", "2",
                       "--max-connections-per-host", "3", "--state-dir", str(tmp_path / "state"),
                       "--report", str(tmp_path / "r.json"), *auth, env=env)
    assert res.code == 0, res.text
    assert identical(pairs)
    assert watch.connections >= 12  # each mailbox planned, then copied: the cap was exercised
    assert 2 <= watch.peak <= 3, watch.peak
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["report_version"] == 2 and report["totals"]["copied"] == 48


def password_file(tmp_path, acc, text: str | None = None):
    path = tmp_path / f"{acc.user}.pw"
    path.write_text((acc.password if text is None else text) + "\n")
    path.chmod(0o600)
    return path


def test_rerun_skips_done_mailboxes_and_retry_failed_runs_only_failed_ones(new_account, tmp_path):
    pairs = mailboxes(new_account, 3, 3, "rr")
    rows = [f"{s.url},{d.url},{password_file(tmp_path, s)},{password_file(tmp_path, d)}" for s, d in pairs]
    (tmp_path / f"{pairs[2][0].user}.pw").unlink()  # the third mailbox's source password file is missing
    csv_file = tmp_path / "users.csv"
    csv_file.write_text("source,destination,src_password_file,dst_password_file\n" + "\n".join(rows) + "\n")
    args = ["batch", str(csv_file), "--state-dir", str(tmp_path / "state"), "--report", str(tmp_path / "r.json")]
    first = migrator(*args)
    assert first.code == 2, first.text
    report = json.loads((tmp_path / "r.json").read_text())
    assert [m["status"] for m in report["mailboxes"]] == ["done", "done", "failed"]
    assert "cannot read password file" in report["mailboxes"][2]["first_error"]["reason"]

    again = migrator(*args)  # nothing fixed: done and failed mailboxes are both skipped, at once
    assert again.code == 2, again.text
    assert "0 mailbox(es) to run" in again.out and "2 done in an earlier run, skipped" in again.out
    assert "1 failed in an earlier run, not retried (--retry-failed)" in again.out
    assert json.loads((tmp_path / "r.json").read_text())["mailboxes"][2]["status"] == "failed"

    password_file(tmp_path, pairs[2][0])  # fixed
    retried = migrator(*args, "--retry-failed")
    assert retried.code == 0, retried.text
    assert "1 mailbox(es) to run" in retried.out and "[1/1] line 4:" in retried.out
    assert identical(pairs)
    assert [m["this_run"] for m in json.loads((tmp_path / "r.json").read_text())["mailboxes"]] == [False, False, True]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stopped_batch_says_so_writes_both_reports_and_resumes(dovecot_slash, new_account, tmp_path, sig):
    """Stopped after its first mailbox: the summary, both reports with the unfinished mailboxes
    marked, exit 130 and how to resume; the rerun skips the mailbox done and copies the rest."""
    pairs = mailboxes(new_account, 5, 3, f"i{sig.value}")
    auth, env = master(dovecot_slash)
    args = ["batch", str(batch_file(tmp_path, pairs)), "--state-dir", str(tmp_path / "state"),
            "--report", str(tmp_path / "r.json"), "--html-report", str(tmp_path / "r.html"), *auth]
    full_env = {**{k: v for k, v in __import__("os").environ.items() if not k.startswith("MIGRATOR_")}, **env}
    proc = subprocess.Popen([sys.executable, "-m", "migrator", *args], env=full_env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=interruptible)
    first_line = proc.stdout.readline()  # "batch: 5 mailbox(es) to run ..."
    done_line = proc.stdout.readline()  # "[1/5] line 2: ... ok ..."
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, first_line + done_line + out + err
    assert "[1/5] line 2:" in done_line and ": ok" in done_line
    assert "rerun the same command to resume" in err and "Traceback" not in err
    assert "mailboxes done without errors" in out
    report = json.loads((tmp_path / "r.json").read_text())
    statuses = [m["status"] for m in report["mailboxes"]]
    assert report["interrupted"] and statuses[0] == "done" and len(statuses) == 5
    assert set(statuses[1:]) <= {"done", "interrupted", "not started"} and statuses.count("done") < 5
    assert "interrupted" in (tmp_path / "r.html").read_text()

    rerun = migrator(*args, env=env)
    assert rerun.code == 0, rerun.text
    assert f"{statuses.count('done')} done in an earlier run, skipped" in rerun.out
    assert identical(pairs)
