"""Throttling and the per-host connection cap (issue 5), against real Dovecot.

Speed itself is measured by benchmarks/bench.py, not asserted here: the only
timed assertions are lower bounds that a rate limit guarantees.
"""

from __future__ import annotations

import time

import pytest

from benchmarks.proxy import DelayProxy
from migrator.throttle import Throttle
from tests import rig
from tests.helpers import dt, migrate, simple_message

pytestmark = pytest.mark.e2e


def _seed(acc, folders: int, per_folder: int) -> None:
    for f in range(folders):
        folder = ["INBOX"] if f == 0 else ["Box", f"f{f}"]
        rig.seed(acc, folder, [(simple_message(f * 1000 + i), ("\\Seen",) if i % 2 else (), dt(i)) for i in range(per_folder)])


def test_max_messages_per_second_bounds_the_whole_run(src_account, dst_account, tmp_path):
    _seed(src_account, 1, 20)
    t0 = time.monotonic()
    res, report = migrate(src_account, dst_account, tmp_path, "--max-messages-per-second", "10", "--workers", "4")
    elapsed = time.monotonic() - t0
    assert res.code == 0, res.text
    assert rig.snapshot(dst_account) == rig.snapshot(src_account)
    assert elapsed >= 1.5  # 20 messages at 10/s cannot take less than 2 s of copying


def test_max_connections_per_host_caps_all_workers_together(dovecot_slash, tmp_path):
    src, dst = dovecot_slash.new_user("src"), dovecot_slash.new_user("dst")
    _seed(src, 6, 10)  # six folders: eight workers would open sixteen connections
    with DelayProxy(dovecot_slash.port) as proxy:
        # Both accounts through one proxy on one host: it counts every connection of the run.
        src.port = dst.port = proxy.port
        res, report = migrate(src, dst, tmp_path, "--workers", "8", "--max-connections-per-host", "4")
        peak, total = proxy.peak, proxy.total
    src.port = dst.port = dovecot_slash.port
    assert res.code == 0, res.text
    assert rig.snapshot(dst) == rig.snapshot(src)
    assert total >= 2
    assert peak <= 4


def test_connection_cap_below_one_worker_is_a_usage_error(src_account, dst_account, tmp_path):
    res, _ = migrate(src_account, dst_account, tmp_path, "--max-connections-per-host", "1")
    assert res.code == 2, res.text
    assert "at least 2" in res.err and "Traceback" not in res.text


def test_throttle_backoff_halves_the_rate_and_recovers():
    now = [100.0]
    t = Throttle(messages_per_second=10, clock=lambda: now[0])
    assert t.backoff("APPEND: NO [THROTTLED] slow down") is True
    assert t.backoff("NO [OVERQUOTA] full") is False
    assert t._factor == 0.5 and t._pause_until == 102.0
    before = t._factor
    now[0] = 200.0
    t.acquire(1, 0)
    assert t._factor > before
