"""No duplicate from an APPEND still in flight at a kill -9 (issue 13).

The destination is reached through a proxy with a 4 s round trip, so every APPEND spends 2 s
between migrator and Dovecot. The run is killed while its second APPENDs are on the way; the
proxy still delivers them, and Dovecot commits them about 1.5 s after the kill. The rerun goes
straight to the server and lists the folder before that: without the wait for in-flight APPENDs
it copies those messages again (duplicates once the late ones land).
"""

from __future__ import annotations

import dataclasses
import json
import time

import pytest

from benchmarks.proxy import DelayProxy
from tests import rig
from tests.e2e.test_resume import FLAGS, assert_identical, popen, run, status_item
from tests.faultproxy import wait_until
from tests.helpers import dt, simple_message

pytestmark = pytest.mark.e2e

RTT_MS = 4000


def _kill_with_appends_in_flight(src, dst, tmp_path, *extra, hold: bool = False):
    """Start a run through the slow proxy; kill -9 it while its second APPENDs are in flight.
    Yields the destination's message count at the kill. hold: the APPENDs in flight are held in
    the proxy until the generator is resumed (they land after whatever the test does meanwhile,
    however slow a loaded machine makes it)."""
    with DelayProxy(dst.port, rtt_ms=RTT_MS) as proxy:
        slow = dataclasses.replace(dst, port=proxy.port)
        proc = popen(src, slow, tmp_path, *extra)
        try:
            # The first APPENDs land (seen straight at the server) half a round trip after they
            # left; their answers take another half; then the next APPENDs leave.
            assert wait_until(lambda: status_item(dst, "MESSAGES") > 0, timeout=60), "no copy landed"
            time.sleep(RTT_MS / 1000 / 2 + 0.5)
        finally:
            proxy.hold_client = hold
            proc.kill()
            proc.wait(30)
        at_kill = status_item(dst, "MESSAGES")
        yield at_kill
        proxy.hold_client = False
        # The proxy forwards what was sent before the kill until it stops: keep it up until the
        # late APPENDs have landed.
        time.sleep(RTT_MS / 1000)


@pytest.fixture
def pair(new_account):
    src, dst = new_account("slash", "ifs"), new_account("slash", "ifd")
    rig.seed(src, ["INBOX"], [(simple_message(i, body="y" * 20000), FLAGS[i % 4], dt(i)) for i in range(240)])
    return src, dst


def test_append_in_flight_at_kill_then_immediate_rerun_ends_identical(pair, tmp_path):
    src, dst = pair
    killed = _kill_with_appends_in_flight(src, dst, tmp_path)
    at_kill = next(killed)
    res, report = run(src, dst, tmp_path)  # at once, straight to the server
    for _ in killed:
        pass
    assert res.code == 0, res.text
    # The scenario happened: APPENDs sent before the kill were committed after it, and the rerun
    # took them as copies instead of sending them again.
    assert report["totals"]["found_on_destination"] >= 1, (at_kill, report["totals"])
    assert_identical(src, dst)


def test_append_committed_after_the_grace_is_removed_by_the_next_run(pair, tmp_path):
    """--in-flight-grace 0: the rerun does not wait, so it sends the in-flight messages again, and
    the late APPENDs make them twice. The next run finds each late twin by its fingerprint and
    removes the copy it sent again (never the one it did not send), and ends identical."""
    src, dst = pair
    killed = _kill_with_appends_in_flight(src, dst, tmp_path, hold=True)
    next(killed)
    res, _ = run(src, dst, tmp_path, "--in-flight-grace", "0")  # the late APPENDs land after it
    for _ in killed:
        pass
    assert res.code == 0, res.text
    twice = status_item(dst, "MESSAGES") - status_item(src, "MESSAGES")
    assert twice > 0, "no APPEND landed after the rerun: the scenario did not happen"
    res, report = run(src, dst, tmp_path, name="after")
    assert res.code == 0, res.text
    assert "committed late; the copies sent again were removed" in json.dumps(report), report
    assert report["totals"]["copied"] == 0
    assert_identical(src, dst)
