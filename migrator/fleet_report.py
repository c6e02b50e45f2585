"""The fleet report of a batch: JSON (--report, versioned) and one static HTML page (--html-report).

The page has no external asset (no script, font, stylesheet or image from anywhere): inline CSS
and an inline SVG chart, so it can be mailed, archived or opened on an air-gapped admin box.
Every value from outside (URLs, error texts) is HTML-escaped.

The chart of messages over time is drawn from each mailbox's start, end and count (the batch
client learns no more than that from a task): a mailbox's messages are spread evenly over its
run. Mailboxes finished in an earlier run are listed but not drawn.
"""

from __future__ import annotations

import html
import time
from typing import Any

REPORT_VERSION = 2  # 1: {command, file, exit_code, mailboxes: [line, source, destination, exit_code, copied, ...]}
SLOWEST = 5
SCHEMA = """report_version 2:
  command "batch", file, ran_on, started/finished (Unix time), elapsed_seconds, exit_code, interrupted
  totals: mailboxes, done, failed, unfinished, copied, already_copied, skipped, failed_messages, bytes,
          messages_per_second
  timeline: [[seconds since start, messages copied so far], ...]
  slowest: lines of the slowest mailboxes of this run; failing: lines of failed mailboxes
  mailboxes: [{line, source, destination, status (done|failed|interrupted|not started), exit_code, folders,
               copied, already_copied, skipped, failed, bytes, started, finished, elapsed_seconds,
               messages_per_second, first_error: {reason, ...} | null, error, ran_on, this_run,
               throttle_waits, waited_seconds (pauses a server asked for on its hosts while it ran)}]"""


def fleet_report(results: list[dict[str, Any]], *, csv_file: str, ran_on: str, started: float, exit_code: int,
                 interrupted: bool, finished: float | None = None) -> dict[str, Any]:
    finished = finished or time.time()
    mailboxes = []
    for r in sorted(results, key=lambda r: r["line"]):
        first = r.get("first_error")
        mailboxes.append({**r, "this_run": r.get("this_run", True), "error": first["reason"] if first else None})
    ran = [m for m in mailboxes if m["this_run"] and m["started"] is not None]
    copied = sum(m["copied"] for m in mailboxes)
    elapsed = finished - started
    by_status = {s: sum(1 for m in mailboxes if m["status"] == s) for s in ("done", "failed")}
    return {
        "report_version": REPORT_VERSION, "command": "batch", "file": csv_file, "ran_on": ran_on,
        "started": round(started, 3), "finished": round(finished, 3), "elapsed_seconds": round(elapsed, 3),
        "exit_code": exit_code, "interrupted": interrupted,
        "totals": {
            "mailboxes": len(mailboxes), **by_status,
            "unfinished": len(mailboxes) - sum(by_status.values()),
            "copied": copied, "already_copied": sum(m["already_copied"] for m in mailboxes),
            "skipped": sum(m["skipped"] for m in mailboxes), "failed_messages": sum(m["failed"] for m in mailboxes),
            "bytes": sum(m["bytes"] for m in mailboxes),
            "messages_per_second": round(sum(m["copied"] for m in ran) / elapsed, 1) if elapsed > 0 else 0.0,
        },
        "timeline": timeline(ran, started),
        "slowest": [m["line"] for m in sorted(ran, key=lambda m: -m["elapsed_seconds"])[:SLOWEST]],
        "failing": [m["line"] for m in mailboxes if m["status"] == "failed"],
        "mailboxes": mailboxes,
    }


def timeline(ran: list[dict[str, Any]], origin: float) -> list[list[float]]:
    """Messages copied so far at each mailbox's start and end (each spread evenly over its run)."""
    moments = sorted({origin, *(m["started"] for m in ran), *(m["finished"] for m in ran)})

    def copied_by(t: float) -> float:
        total = 0.0
        for m in ran:
            span = m["finished"] - m["started"]
            share = 1.0 if span <= 0 or t >= m["finished"] else max(0.0, (t - m["started"]) / span)
            total += m["copied"] * share
        return total

    return [[round(t - origin, 3), round(copied_by(t))] for t in moments]


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em}
.totals{display:flex;flex-wrap:wrap;gap:.8em}.totals div{background:#f3f4f6;padding:.5em .9em;border-radius:6px}
.totals b{display:block;font-size:1.3em}
table{border-collapse:collapse;width:100%}th,td{padding:.3em .6em;border-bottom:1px solid #ddd;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.done{color:#166534}.failed{color:#b91c1c;font-weight:bold}.interrupted,.not-started{color:#92400e}
svg{background:#fafafa;border:1px solid #ddd}
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def render_html(report: dict[str, Any]) -> str:
    t = report["totals"]
    boxes = [("mailboxes", t["mailboxes"]), ("done", t["done"]), ("failed", t["failed"]),
             ("unfinished", t["unfinished"]), ("messages copied", t["copied"]),
             ("already there", t["already_copied"]), ("skipped", t["skipped"]),
             ("messages failed", t["failed_messages"]), ("MB copied", f"{t['bytes'] / 1e6:.1f}"),
             ("msgs/s", t["messages_per_second"]), ("elapsed", f"{report['elapsed_seconds']:.1f} s")]
    by_line = {m["line"]: m for m in report["mailboxes"]}
    status = "interrupted" if report["interrupted"] else f"exit code {report['exit_code']}"
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>migrator batch: {_e(report['file'])}</title><style>{_CSS}</style></head><body>",
        f"<h1>migrator batch: {_e(report['file'])}</h1>",
        f"<p id='summary'>{_e(status)}; ran on {_e(report['ran_on'])}; report version {report['report_version']}</p>",
        "<div class='totals' id='totals'>",
        *(f"<div><b>{_e(v)}</b>{_e(k)}</div>" for k, v in boxes), "</div>",
        "<h2>Messages over time</h2>", chart(report["timeline"]),
        "<h2>Failing mailboxes</h2>", _table([by_line[n] for n in report["failing"]], "failing"),
        "<h2>Slowest mailboxes</h2>", _table([by_line[n] for n in report["slowest"]], "slowest"),
        "<h2>All mailboxes</h2>", _table(report["mailboxes"], "mailboxes"),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _table(rows: list[dict[str, Any]], ident: str) -> str:
    if not rows:
        return f"<p id='{ident}'>none</p>"
    head = ("line", "source", "destination", "status", "folders", "copied", "skipped", "failed", "MB",
            "elapsed s", "msgs/s", "first error")
    out = [f"<table id='{ident}'><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    for m in rows:
        cls = m["status"].replace(" ", "-")
        err = m["first_error"]["reason"] if m.get("first_error") else ""
        earlier = "" if m.get("this_run", True) else " (earlier run)"
        cells = [f"<td class='n'>{m['line']}</td>", f"<td>{_e(m['source'])}</td>", f"<td>{_e(m['destination'])}</td>",
                 f"<td class='{cls}'>{_e(m['status'])}{earlier}</td>"]
        cells += [f"<td class='n'>{_e(v)}</td>" for v in (m["folders"], m["copied"], m["skipped"], m["failed"],
                                                          f"{m['bytes'] / 1e6:.1f}", m["elapsed_seconds"],
                                                          m["messages_per_second"])]
        cells.append(f"<td>{_e(err)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "\n".join(out) + "</table>"


def chart(points: list[list[float]], width: int = 640, height: int = 220) -> str:
    """An inline SVG line chart of messages copied over time, with its two axes labelled."""
    pad = 40
    max_t = max((p[0] for p in points), default=0) or 1
    max_n = max((p[1] for p in points), default=0) or 1
    xy = [(pad + p[0] / max_t * (width - 2 * pad), height - pad - p[1] / max_n * (height - 2 * pad))
          for p in points]
    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)
    return (f"<svg id='chart' width='{width}' height='{height}' "
            f"viewBox='0 0 {width} {height}' role='img' aria-label='messages copied over time'>"
            f"<line x1='{pad}' y1='{height - pad}' x2='{width - pad}' y2='{height - pad}' stroke='#888'/>"
            f"<line x1='{pad}' y1='{pad}' x2='{pad}' y2='{height - pad}' stroke='#888'/>"
            f"<polyline fill='none' stroke='#2563eb' stroke-width='2' points='{line}'/>"
            f"<text x='{pad}' y='{pad - 8}' font-size='12'>{int(max_n)} messages</text>"
            f"<text x='{width - pad}' y='{height - pad + 18}' font-size='12' text-anchor='end'>{max_t:.1f} s</text>"
            f"<text x='{pad}' y='{height - pad + 18}' font-size='12'>0</text></svg>")
