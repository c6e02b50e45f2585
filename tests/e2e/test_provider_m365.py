"""Microsoft 365's throttling and quirks (issue 16), against Dovecot behind tests/m365_standin.py.

Microsoft 365 cannot be reached from here: M365StandIn is a stand-in, a proxy that answers APPENDs
as Exchange Online is documented and reported to (`NO Request is throttled. Suggested Backoff
Time: N ms`, with or without a code, then a BYE), and closes a session after 10 errors. It counts
the APPENDs it forwards, so a test sees whether any session sent one during a wait the server asked
for."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter

import pytest

from tests import rig
from tests.helpers import dt, migrator, simple_message
from tests.m365_standin import M365StandIn

pytestmark = pytest.mark.e2e

GRACE = 0.25  # an APPEND already on its way when the server answered another session is not a new one


def seeded(new_account, n: int):
    src, dst = new_account(), new_account()
    rig.seed(src, ["INBOX"], [(simple_message(i, body="x" * (300 + i % 5)), (), dt(i % 20)) for i in range(n)])
    return src, dst


def held(account) -> Counter:
    return Counter(sha for sha, _flags, _date in rig.snapshot(account).get(("INBOX",), []))


@pytest.mark.parametrize("wording,bye", [("bare", False), ("throttled", True)])
def test_four_workers_wait_out_every_throttle_and_lose_nothing(new_account, tmp_path, wording, bye):
    src, dst = seeded(new_account, 120)
    with M365StandIn(dst.port, throttle_every=10, throttles=3, backoff_ms=600, wording=wording, bye=bye,
                     no_multiappend=True, error_budget=10) as m365:
        via = dataclasses.replace(dst, port=m365.port)
        res = migrator("migrate", src.url, via.url, "--state", str(tmp_path / "state"), "--report",
                       str(tmp_path / "report.json"), "--workers", "4", "--batch-mb", "0.1", "--in-flight-grace", "0.3",
                       src=src, dst=via,
                       env={"MIGRATOR_PROGRESS_INTERVAL": "60"})  # not --quiet: the waits are said
        windows, appends = list(m365.windows), list(m365.appends)
    assert res.code == 0, res.text
    report = json.loads((tmp_path / "report.json").read_text())
    assert held(dst) == held(src)  # 0 lost, 0 duplicated
    assert report["totals"]["failed"] == 0 and report["totals"]["copied"] == 120
    assert len(windows) == 3
    for start, end in windows:  # no session sent an APPEND while the server asked to wait
        assert sum(1 for t, _s in appends if start + GRACE <= t <= end) == 0, (start, end)
    waits = report["throttle_waits"]
    assert len(waits) >= 3 and all(w["side"] == "destination" and w["seconds"] > 0 for w in waits)
    said = [line for line in res.err.splitlines() if line.startswith("destination throttled: waiting")]
    assert said and "as the server asked" in said[0], res.err
