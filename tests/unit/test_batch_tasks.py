"""A batch's tasks: what travels to a worker (never a secret), a task run again without its
state (no duplicate), and the per-host limits shared by the mailboxes of one process."""

from __future__ import annotations

import pickle
import threading
import time

import pytest

from migrator import hostlimits
from migrator.accounts import parse_endpoint
from migrator.batch import BatchRow
from migrator.cli.batch_task import migrate_mailbox, tasks_for
from migrator.cli.options import ConnOptions, FilterOptions, MappingOptions, RunOptions
from migrator.errors import Interrupted, UsageError
from migrator.naming import INBOX
from migrator.stores.archive import ArchiveStore
from tests.helpers import migrator
from tests.unit.archive_helpers import backup, contents, seeded_source

WORK = ("Work",)
SECRET_ENV, SECRET_FILE = "env-Secret-4711", "file-Secret-0815"


def _tasks(rows, state_dir=None, cluster=False, per_account=10):
    return tasks_for("b1", rows, conn=ConnOptions(src_auth_user="admin"), run=RunOptions(workers=2),
                     mapping=MappingOptions(), filters=FilterOptions(), caps=hostlimits.Caps(6, None),
                     per_account=per_account, state_dir=state_dir, cluster=cluster)


def test_what_is_submitted_to_the_cluster_holds_no_password(tmp_path, monkeypatch):
    """The tasks name where secrets are (a file on shared storage, the workers' environment),
    never a secret: neither pickled nor cloudpickled as Dask sends them."""
    pytest.importorskip("distributed")
    import cloudpickle

    from migrator.cluster import DaskExecutor

    monkeypatch.setenv("MIGRATOR_SRC_PASSWORD", SECRET_ENV)
    monkeypatch.setenv("MIGRATOR_DST_PASSWORD", SECRET_ENV)
    pw = tmp_path / "bob.pw"
    pw.write_text(SECRET_FILE + "\n")
    pw.chmod(0o600)
    rows = [BatchRow(2, "imap://alice@mail.example", "imap://alice@new.example"),
            BatchRow(3, "imap://bob@mail.example", "imap://bob@new.example", src_password_file=str(pw))]
    submitted = []

    class Client:
        def submit(self, fn, *args, **kwargs):
            submitted.append((fn, args, kwargs))
            return object()

    executor = DaskExecutor.__new__(DaskExecutor)  # no cluster: what would go to one is captured
    executor.client, executor.task_fn, executor.retries, executor.batch_id = Client(), migrate_mailbox, 2, "b1"
    executor.submit(_tasks(rows, cluster=True))
    assert [(fn, kw["pure"], kw["retries"]) for fn, _a, kw in submitted] == [(migrate_mailbox, False, 2)] * 2
    for _fn, args, _kw in submitted:
        for blob in (pickle.dumps(args), cloudpickle.dumps(args)):
            assert SECRET_ENV.encode() not in blob and SECRET_FILE.encode() not in blob
    assert submitted[1][1][0].row.src_password_file == str(pw)  # the reference travels


def test_a_task_run_again_without_its_state_copies_nothing_twice(tmp_path):
    """A rerun on a worker that cannot see the first run's state (no shared --state-dir) is
    reconciled with the destination: the messages are found there, none is copied again."""
    backup(seeded_source({INBOX: 12, WORK: 5}), tmp_path / "src", tmp_path / "seed.sqlite")
    row = BatchRow(2, f"archive://{tmp_path / 'src'}", f"archive://{tmp_path / 'dst'}")
    first = migrate_mailbox(_tasks([row], state_dir=str(tmp_path / "worker-a"))[0])
    assert (first["status"], first["copied"]) == ("done", 17) and first["folders"] == 2
    again = migrate_mailbox(_tasks([row], state_dir=str(tmp_path / "worker-b"))[0])  # another worker, no state
    assert (again["status"], again["copied"], again["already_copied"]) == ("done", 0, 17)
    held = contents(ArchiveStore(str(tmp_path / "dst")))
    assert sum(held[INBOX].values()) == 12 and sum(held[WORK].values()) == 5
    assert max(held[INBOX].values()) == 1  # each message once


def test_mailbox_needs_fit_both_caps():
    same = parse_endpoint("imap://a@mail.example"), parse_endpoint("imap://b@MAIL.example")
    apart = parse_endpoint("imap://a@old.example"), parse_endpoint("imap://a@new.example")
    assert hostlimits.mailbox_needs(*same, 4, 10, hostlimits.Caps(3)) == (1, {"mail.example": hostlimits.Need(2)})
    assert hostlimits.mailbox_needs(*apart, 4, 3, hostlimits.Caps(10)) == (
        3, {"new.example": hostlimits.Need(3), "old.example": hostlimits.Need(3)})
    with pytest.raises(UsageError, match="at least 2"):
        hostlimits.mailbox_needs(*same, 4, 1, hostlimits.Caps(10))


def test_reservations_hold_the_caps_and_never_deadlock():
    """12 mailboxes in 12 threads, each taking 2 connections on one host and 1 on its own, under
    3 connections and 2 mailboxes per host: never more, and every one gets its turn."""
    limits = hostlimits.LocalHostLimits(hostlimits.Caps(connections_per_host=3, mailboxes_per_host=2))
    held: dict[str, int] = {}
    peaks: dict[str, int] = {}
    lock = threading.Lock()

    def mailbox(i: int) -> None:
        needs = {"shared": hostlimits.Need(2), f"own{i}": hostlimits.Need(1)}
        with limits.reserve(needs, lambda: False):
            with lock:
                held["shared"] = held.get("shared", 0) + 2
                peaks["shared"] = max(peaks.get("shared", 0), held["shared"])
            time.sleep(0.01)
            with lock:
                held["shared"] -= 2

    threads = [threading.Thread(target=mailbox, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads)
    assert peaks["shared"] == 2 and limits.peak_connections["shared"] == 2  # 2 + 2 > 3: one mailbox at a time
    with limits.reserve({"shared": hostlimits.Need(3)}, lambda: False):
        with pytest.raises(Interrupted):
            limits.acquire({"shared": hostlimits.Need(1)}, lambda: True)  # stopped while waiting
    with pytest.raises(UsageError, match="more than --max-connections-per-host 3"):
        limits.acquire({"shared": hostlimits.Need(4)}, lambda: False)


@pytest.mark.xdist_group("dask")
def test_cluster_local_runs_the_mailboxes_in_worker_processes(tmp_path):
    """--cluster local: a LocalCluster of --parallel processes started by the batch; every
    mailbox copied by one of them, none by the client."""
    pytest.importorskip("distributed")
    import json
    import subprocess
    import sys

    rows = []
    for i in range(2):
        backup(seeded_source({INBOX: 3 + i}), tmp_path / f"src{i}", tmp_path / f"seed{i}.sqlite")
        rows.append(f"archive://{tmp_path / f'src{i}'},archive://{tmp_path / f'dst{i}'}\n")
    (tmp_path / "u.csv").write_text("source,destination\n" + "".join(rows))
    proc = subprocess.Popen([sys.executable, "-m", "migrator", "batch", str(tmp_path / "u.csv"), "--cluster", "local",
                             "--parallel", "2", "--state-dir", str(tmp_path / "state"),
                             "--report", str(tmp_path / "r.json")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    report = json.loads((tmp_path / "r.json").read_text())
    assert [(m["status"], m["copied"]) for m in report["mailboxes"]] == [("done", 3), ("done", 4)]
    assert report["ran_on"] == "the Dask cluster local"
    pids = {int(m["ran_on"].rsplit(":", 1)[1]) for m in report["mailboxes"]}
    assert proc.pid not in pids and all(pids)
    for i in range(2):
        assert sum(sum(c.values()) for c in contents(ArchiveStore(str(tmp_path / f"dst{i}"))).values()) == 3 + i


def test_a_batch_of_backups_encrypts_every_archive_and_a_batch_restore_reads_them_with_the_identity(tmp_path):
    """--encrypt-to on a batch: every archive destination is encrypted to it (only the public key
    stored); --identity: a batch of restores from them; a bad recipient is refused once, up front."""
    pyrage = pytest.importorskip("pyrage")
    key = pyrage.x25519.Identity.generate()
    identity = tmp_path / "key.txt"
    identity.write_text(f"{key}\n")
    identity.chmod(0o600)
    for name, n in (("alice", 3), ("bob", 4)):
        backup(seeded_source({INBOX: n, WORK: 2}), tmp_path / name, tmp_path / f"{name}.sqlite")
    names = ("alice", "bob")
    csv = tmp_path / "backups.csv"
    csv.write_text("source,destination\n" + "".join(f"archive://{tmp_path / n},archive://{tmp_path / 'enc' / n}\n"
                                                     for n in names))
    res = migrator("batch", str(csv), "--encrypt-to", str(key.to_public()), "--state-dir", str(tmp_path / "s1"))
    assert res.code == 0, res.text
    for n in names:
        marker = (tmp_path / "enc" / n / "archive.json").read_text()
        assert str(key.to_public()) in marker and str(key) not in marker
    back = tmp_path / "restores.csv"
    back.write_text("source,destination\n" + "".join(
        f"archive://{tmp_path / 'enc' / n},archive://{tmp_path / 'r' / n}\n" for n in names))
    blind = migrator("batch", str(back), "--state-dir", str(tmp_path / "s2"))
    assert blind.code != 0 and "--identity" in blind.text and "Traceback" not in blind.text, blind.text
    res = migrator("batch", str(back), "--identity", str(identity), "--state-dir", str(tmp_path / "s3"))
    assert res.code == 0, res.text
    for n in names:
        assert contents(ArchiveStore(str(tmp_path / "r" / n))) == contents(ArchiveStore(str(tmp_path / n)))
    bad = migrator("batch", str(csv), "--encrypt-to", "age1nope", "--state-dir", str(tmp_path / "s4"))
    assert bad.code == 2 and "is not an age recipient" in bad.err and bad.err.count("\n") == 1, bad.text


def test_help_shows_the_extras_to_install():
    """--help is rendered by rich, which takes `[dask]` for markup and drops it unless escaped."""
    batch = migrator("batch", "--help", env={"COLUMNS": "250"})
    assert batch.code == 0 and "pip install 'migrator[dask]'" in batch.out, batch.out
    assert "pip install 'migrator[encrypt]'" in migrator("migrate", "--help", env={"COLUMNS": "250"}).out
