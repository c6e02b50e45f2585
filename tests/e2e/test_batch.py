"""batch: many mailboxes from a CSV, with a master user; one failing mailbox does not stop the others."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests import rig
from tests.faultproxy import FaultProxy, wait_until
from tests.helpers import migrator, simple_message

pytestmark = pytest.mark.e2e


def test_batch_with_master_user_continues_past_a_failing_mailbox(dovecot_slash, new_account, tmp_path):
    users = [new_account("slash") for _ in range(3)]
    targets = [new_account("dot") for _ in range(3)]
    for i, u in enumerate(users):
        rig.seed(u, ["INBOX"], [simple_message(10 * i + k) for k in range(3)])
    dst_pw = {t.user: tmp_path / f"{t.user}.pw" for t in targets}
    for t in targets:
        dst_pw[t.user].write_text(t.password)
        dst_pw[t.user].chmod(0o600)
    lines = ["# a comment", "source,destination,dst_password_file"]
    lines += [f"{u.url},{t.url},{dst_pw[t.user]}" for u, t in zip(users, targets, strict=True)]
    lines.insert(3, f"imap://nosuchuser@127.0.0.1:{dovecot_slash.port},{targets[0].url},{dst_pw[targets[0].user]}")
    csv_file = tmp_path / "batch.csv"
    csv_file.write_text("\n".join(lines) + "\n")

    env = {"MIGRATOR_SRC_PASSWORD": dovecot_slash.master_password}
    args = ["batch", str(csv_file), "--src-auth-user", dovecot_slash.master_user, "--parallel", "2",
            "--state-dir", str(tmp_path / "state"), "--report", str(tmp_path / "r.json")]
    res = migrator(*args, env=env)
    assert res.code == 3, res.text  # the unknown user cannot log in: the worst code wins
    report = json.loads((tmp_path / "r.json").read_text())
    codes = [m["exit_code"] for m in report["mailboxes"]]
    assert sorted(codes) == [0, 0, 0, 3]
    assert sum(m["copied"] for m in report["mailboxes"]) == 9
    for u, t in zip(users, targets, strict=True):
        assert rig.snapshot(t)[("INBOX",)] == rig.snapshot(u)[("INBOX",)]
    assert "line 4: imap://nosuchuser@" in res.out and "exit 3" in res.out

    again = migrator(*args, env=env)  # the batch journal: mailboxes done (and failed) are not run again
    report = json.loads((tmp_path / "r.json").read_text())
    assert not any(m["this_run"] for m in report["mailboxes"]) and again.code == 3
    assert "3 done in an earlier run, skipped" in again.out


def test_parallel_mailboxes_each_have_their_own_connection_cap(new_account, tmp_path):
    """--max-connections-per-account is shared by the workers of one run (one mailbox), not by the
    mailboxes of a batch: providers limit connections per account. Mailbox A stalls in the middle
    of an APPEND (its proxy holds the traffic) with the two connections its cap allows; mailbox B,
    on the same host, is copied meanwhile (the host's own cap, 10 by default, leaves room for B)."""
    src = [new_account("slash", "psrc") for _ in range(2)]
    dst = [new_account("slash", "pdst") for _ in range(2)]
    for i, acc in enumerate(src):
        rig.seed(acc, ["INBOX"], [simple_message(10 * i + k, body="x" * 20_000) for k in range(5)])
    files = []
    for acc in src + dst:
        path = tmp_path / f"{acc.user}.pw"
        path.write_text(acc.password)
        path.chmod(0o600)
        files.append(path)
    box: dict = {}
    # B's source is held until A has stalled: B then needs connections while A holds its two.
    with FaultProxy(dst[0].port, cut_at=[30_000], direction="up", on_threshold=lambda: box["a"].pause()) as a, \
            FaultProxy(src[1].port) as b:
        box["a"] = a
        b.pause()
        rows = [f"{src[0].url},imap://{dst[0].user}@127.0.0.1:{a.port},{files[0]},{files[2]}",
                f"imap://{src[1].user}@127.0.0.1:{b.port},{dst[1].url},{files[1]},{files[3]}"]
        csv_file = tmp_path / "batch.csv"
        csv_file.write_text("source,destination,src_password_file,dst_password_file\n" + "\n".join(rows) + "\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith("MIGRATOR_")}
        proc = subprocess.Popen([sys.executable, "-m", "migrator", "batch", str(csv_file), "--parallel", "2",
                                 "--max-connections-per-account", "2", "--state-dir", str(tmp_path / "state"),
                                 "--report", str(tmp_path / "r.json")],
                                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        try:
            assert wait_until(lambda: a.thresholds_left == 0, timeout=60), "mailbox A never reached its APPEND"
            b.resume()
            b_done = wait_until(lambda: rig.snapshot(dst[1]).get(("INBOX",)) == rig.snapshot(src[1])[("INBOX",)],
                                timeout=20, step=0.2)
        finally:
            a.resume()
            b.resume()
            out, err = proc.communicate(timeout=180)
    assert b_done, "mailbox B waited for mailbox A's connections"
    assert proc.returncode == 0, out + err
    report = json.loads((tmp_path / "r.json").read_text())
    assert [m["exit_code"] for m in report["mailboxes"]] == [0, 0]
    assert sum(m["copied"] for m in report["mailboxes"]) == 10


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("source,destination,colour\n", "unknown column 'colour'"),
        ("destination\nimap://a@127.0.0.1\n", "no 'source' column"),
        ("source,destination\nimap://a@127.0.0.1,\n", ":2: 'destination' is empty"),
        ("source,destination\n\nfoo,imap://a@127.0.0.1\n", ":3: 'foo' is not an account URL"),
    ],
)
def test_bad_batch_files(tmp_path, content, fragment):
    f = tmp_path / "b.csv"
    f.write_text(content)
    res = migrator("batch", str(f))
    assert res.code == 2, res.text
    assert fragment in res.err and "Traceback" not in res.err
