"""batch --cluster: a Dask scheduler and workers as separate processes on 127.0.0.1; a worker
killed (SIGKILL) in the middle of a mailbox; the batch still copies every mailbox once."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests import rig
from tests.connwatch import ConnWatch
from tests.e2e.test_batch_scale import batch_file, identical, mailboxes, master
from tests.faultproxy import wait_until
from tests.rig import free_port

pytest.importorskip("distributed", reason="the dask extra: pip install 'migrator[dask]'")
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("dask")]

# The leases of a worker that died go back after this long (Dask's default: 30 s).
DASK_ENV = {"DASK_DISTRIBUTED__SCHEDULER__LOCKS__LEASE_TIMEOUT": "3s",
            "DASK_DISTRIBUTED__SCHEDULER__LOCKS__LEASE_VALIDATION_INTERVAL": "1s"}


def _env(extra: dict) -> dict:
    base = {k: v for k, v in os.environ.items() if not k.startswith("MIGRATOR_")}
    return {**base, **DASK_ENV, **extra}


def _start(args: list[str], env: dict, log) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", *args], env=env, stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def _worker(address: str, env: dict, log) -> subprocess.Popen:
    # --no-nanny: a worker that dies stays dead (a nanny would restart it with the same crash point).
    return _start(["distributed.cli.dask_worker", address, "--nthreads", "2", "--no-nanny",
                   "--no-dashboard", "--death-timeout", "60"], env, log)


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def test_a_worker_killed_mid_mailbox_loses_and_duplicates_nothing(dovecot_slash, new_account, tmp_path):
    pairs = mailboxes(new_account, 12, 6, "dk")
    auth, secrets = master(dovecot_slash)
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    log = open(tmp_path / "dask.log", "w")
    procs = [_start(["distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", str(port),
                     "--no-dashboard"], _env({}), log)]
    try:
        # Worker A kills itself (SIGKILL) the 2nd time an APPEND has been sent and not yet
        # confirmed: in the middle of a mailbox, at the worst moment for duplicates.
        assert wait_until(lambda: _listening(port), timeout=30), (tmp_path / "dask.log").read_text()
        doomed = _worker(address, _env({**secrets, "MIGRATOR_TEST_CRASH_AT": "append-sent:2"}), log)
        procs += [doomed, _worker(address, _env(secrets), log)]
        owners = [p.pid for p in procs]
        with ConnWatch(dovecot_slash.port, owners=owners) as watch:
            args = ["batch", str(batch_file(tmp_path, pairs, watch.port)), "--cluster", address, "--workers", "1",
                    "--state-dir", str(tmp_path / "shared-state"),
                    "--report", str(tmp_path / "r.json"), *auth]
            # The client has no password: only the workers do (their environment).
            client = subprocess.Popen([sys.executable, "-m", "migrator", *args], env=_env({}),
                                      stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True)
            owners.append(client.pid)
            wait_until(lambda: doomed.poll() is not None or client.poll() is not None, timeout=60)
            assert doomed.poll() is not None, "worker A never reached its crash point: " + "".join(client.communicate())
            spare = _worker(address, _env(secrets), log)  # another worker takes its place
            procs.append(spare)
            owners.append(spare.pid)
            out, err = client.communicate(timeout=120)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        log.close()
    assert doomed.returncode == -signal.SIGKILL
    assert client.returncode == 0, out + err + (tmp_path / "dask.log").read_text()[-3000:]
    assert identical(pairs)  # every message once: nothing lost, nothing duplicated
    report = json.loads((tmp_path / "r.json").read_text())
    assert [m["status"] for m in report["mailboxes"]] == ["done"] * 12
    assert report["totals"]["copied"] + report["totals"]["already_copied"] >= 72
    # Every IMAP connection came from a worker process, none from the client. (None: a connection
    # whose process was gone before the proxy looked it up: worker A's threads when it killed itself.)
    assert client.pid not in watch.owners_seen
    assert set(watch.owners_seen) <= {doomed.pid, procs[2].pid, spare.pid, None}, watch.owners_seen
    assert watch.owners_seen.count(None) <= 2 and len(watch.owners_seen) >= 24
    assert watch.peak <= 10  # --max-connections-per-host (10) held across the workers
    assert time.time() - report["started"] < 120
    rig.snapshot(pairs[0][1])
