"""The fleet report: its JSON schema, and its HTML page as a real headless Chromium renders it."""

from __future__ import annotations

import re
import shutil
import subprocess

from migrator.batch import BatchRow
from migrator.batchrun import mailbox_result
from migrator.fleet_report import REPORT_VERSION, fleet_report, render_html

HOSTILE = "<script>alert('x')</script> [OVERQUOTA] Quota exceeded"


def _results(t0: float) -> list[dict]:
    def report(copied: int, failures: list | None = None) -> dict:
        return {"elapsed_seconds": 2.0, "folders": {"INBOX": {}, "Sent": {}},
                "totals": {"copied": copied, "copied_bytes": copied * 5000, "already_copied": 1,
                           "found_on_destination": 0, "skipped": {"\\Deleted": 2}, "failed": len(failures or [])},
                "failures": failures or [], "folder_errors": []}

    out = []
    for i, (copied, failures) in enumerate([(120, None), (80, [{"folder": "INBOX", "uid": 7, "reason": HOSTILE}]),
                                            (300, None)]):
        row = BatchRow(i + 2, f"imaps://user{i}@old.example", f"imaps://user{i}@new.example")
        r = mailbox_result(row, 1 if failures else 0, t0 + i, "worker-1:42", report=report(copied, failures))
        r["started"], r["finished"], r["elapsed_seconds"] = t0 + i, t0 + i + 2 + i, 2.0 + i
        out.append(r)
    refused = mailbox_result(BatchRow(5, "imap://z@old.example", "imap://z@new.example"), 3, t0, "w:1",
                             error="cannot connect to old.example: refused")
    refused["finished"], refused["elapsed_seconds"] = t0 + 0.5, 0.5
    return [*out, refused]


def test_the_json_report_has_its_schema():
    fleet = fleet_report(_results(1000.0), csv_file="users.csv", ran_on="a local pool", started=1000.0,
                         exit_code=3, interrupted=False, finished=1008.0)
    assert fleet["report_version"] == REPORT_VERSION == 2
    t = fleet["totals"]
    assert (t["mailboxes"], t["done"], t["failed"], t["unfinished"]) == (4, 2, 2, 0)
    assert (t["copied"], t["already_copied"], t["skipped"], t["failed_messages"]) == (500, 3, 6, 1)
    assert fleet["elapsed_seconds"] == 8.0 and t["messages_per_second"] == 62.5
    assert fleet["slowest"][0] == 4 and fleet["failing"] == [3, 5]
    first = {m["line"]: m["first_error"] for m in fleet["mailboxes"]}
    assert first[3]["reason"] == HOSTILE and first[3]["uid"] == 7 and first[2] is None
    assert fleet["timeline"][0] == [0.0, 0] and fleet["timeline"][-1][1] == 500
    values = [n for _t, n in fleet["timeline"]]
    assert values == sorted(values)


def test_the_html_page_renders_in_headless_chromium(tmp_path):
    """One static page: no script, no external asset; Chromium shows the totals, the chart, the
    failing and slowest mailboxes, the first error as text (escaped, never run)."""
    fleet = fleet_report(_results(1000.0), csv_file="users.csv", ran_on="the Dask cluster tcp://sched:8786",
                         started=1000.0, exit_code=3, interrupted=False, finished=1008.0)
    page = render_html(fleet)
    assert not re.search(r"(src|href)\s*=|https?://|<link|@import|url\(", page)  # nothing fetched from anywhere
    path = tmp_path / "batch.html"
    path.write_text(page)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Chromium is needed (.ci/run installs it)"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--virtual-time-budget=2000"]
    dom = subprocess.run([chromium, *flags, "--dump-dom", path.as_uri()], capture_output=True, text=True,
                         timeout=60, stdin=subprocess.DEVNULL).stdout
    assert "<script" not in dom.replace("&lt;script", "")  # the hostile reason stayed text
    assert "&lt;script&gt;alert('x')&lt;/script&gt; [OVERQUOTA] Quota exceeded" in dom
    assert re.search(r"<b>500</b>\s*messages copied", dom) and re.search(r"<b>2</b>\s*failed", dom)
    assert "<polyline" in dom and "500 messages" in dom and re.search(r"<b>8.0 s</b>\s*elapsed", dom)
    failing = dom[dom.index("id=\"failing\""):dom.index("Slowest")]
    assert "user1@old.example" in failing and "imap://z@old.example" in failing and "user0@" not in failing
    shot = tmp_path / "batch.png"
    subprocess.run([chromium, *flags, "--window-size=1200,1100", f"--screenshot={shot}", path.as_uri()],
                   capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
