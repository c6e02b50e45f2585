"""The examples stay true: the cron backup script runs against the rig and backs up incrementally."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import rig
from tests.helpers import simple_message

pytestmark = pytest.mark.e2e
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_backup_cron_script_is_incremental(src_account, tmp_path):
    rig.seed(src_account, ["INBOX"], [simple_message(i) for i in range(4)])
    pwdir = tmp_path / "pw"
    pwdir.mkdir(mode=0o700)
    pwfile = pwdir / f"{src_account.user}.password"
    pwfile.write_text(src_account.password + "\n")
    pwfile.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIGRATOR_")}
    env["MIGRATOR_PASSWORD_DIR"] = str(pwdir)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    cmd = ["bash", str(EXAMPLES / "backup-cron.sh"), src_account.user, f"127.0.0.1:{src_account.imaps_port}",
           str(tmp_path / "backups"), "--ca-file", src_account.ca_file]
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    report = json.loads((tmp_path / "backups" / f"{src_account.user}.last-report.json").read_text())
    assert report["totals"]["copied"] == 4

    rig.seed(src_account, ["INBOX"], [simple_message(10)])
    second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    report = json.loads((tmp_path / "backups" / f"{src_account.user}.last-report.json").read_text())
    assert report["totals"]["copied"] == 1 and report["totals"]["already_copied"] == 4


def test_demo_runs_end_to_end():
    """The README's first command runs examples/demo.py: it must keep working."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIGRATOR_")}
    res = subprocess.run([sys.executable, str(EXAMPLES / "demo.py")], capture_output=True, text=True, env=env,
                         timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "DEMO OK" in res.stdout and "[restore: exit 0]" in res.stdout


def test_cutover_script_bulk_then_follow_then_verify(src_account, dst_account, tmp_path):
    """examples/cutover.sh: the bulk step copies; mail that lands after it is copied by the follow
    step (here for 2 s), which then verifies: exit 0, identical."""
    rig.seed(src_account, ["INBOX"], [simple_message(i) for i in range(3)])
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIGRATOR_")}
    env.update({**src_account.env("src"), **dst_account.env("dst"), "MIGRATOR_CUTOVER_OPTS": "--workers 2"})
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")

    def step(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(EXAMPLES / "cutover.sh"), *args], capture_output=True, text=True,
                              env=env, timeout=120, cwd=tmp_path)

    bulk = step("bulk", src_account.url, dst_account.url, "--quiet")
    assert bulk.returncode == 0, bulk.stdout + bulk.stderr
    rig.seed(src_account, ["INBOX"], [simple_message(10)])  # after the bulk pass, before the MX switch
    follow = step("follow", src_account.url, dst_account.url, "2s")
    assert follow.returncode == 0, follow.stdout + follow.stderr
    assert "follow: first pass done: 1 copied, 3 already there" in follow.stdout, follow.stdout
    assert "identical" in follow.stdout.lower(), follow.stdout
    assert rig.snapshot(dst_account) == rig.snapshot(src_account)
