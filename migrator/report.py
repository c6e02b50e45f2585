"""Rendering what Stats counted: the end-of-run summary (text) and the JSON report."""

from __future__ import annotations

from typing import Any

from migrator.engine.verify import FolderDiff
from migrator.naming import display
from migrator.stats import Stats

REPORT_VERSION = 1


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _would_go(report: dict[str, Any]) -> str:
    if report.get("destination_keeps_history"):
        return "would leave the latest snapshot (deleted on the source; kept in the earlier ones)"
    return "would be deleted (--delete-extra)"


def run_report(stats: Stats, *, command: str, source: str, destination: str, dry_run: bool,
               would_create: list | None = None) -> dict[str, Any]:
    elapsed = stats.elapsed()
    copied = stats.total("copied")
    folders = {}
    for name, fc in sorted(stats.folders.items()):
        folders[name] = {
            "created": fc.created,
            "to_copy": fc.planned,
            "to_copy_bytes": fc.planned_bytes,
            "copied": fc.copied,
            "copied_bytes": fc.copied_bytes,
            "copied_within_destination": fc.copied_within,
            "already_copied": fc.already,
            "found_on_destination": fc.found,
            "skipped": dict(fc.skipped),
            "failed": fc.failed,
            "flags_updated": fc.flags_updated,
            "deleted_extra": fc.deleted_extra,
        }
    return {
        "report_version": REPORT_VERSION,
        "command": command,
        "dry_run": dry_run,
        "source": source,
        "destination": destination,
        "ok": stats.ok,
        "interrupted": stats.interrupted,
        "elapsed_seconds": round(elapsed, 3),
        "totals": {
            "folders_created": sum(1 for fc in stats.folders.values() if fc.created),
            "folders_to_create": [display(f) for f in (would_create or [])],
            "to_copy": stats.total("planned"),
            "to_copy_bytes": stats.total("planned_bytes"),
            "copied": copied,
            "copied_bytes": stats.total("copied_bytes"),
            "copied_within_destination": stats.total("copied_within"),
            "already_copied": stats.total("already"),
            "found_on_destination": stats.total("found"),
            "skipped": dict(stats.total_skipped()),
            "failed": len(stats.failures),
            "flags_updated": stats.total("flags_updated"),
            "deleted_extra": stats.total("deleted_extra"),
            "folders_gone_from_source": dict(stats.folders_gone),
            "messages_per_second": round(copied / elapsed, 1) if elapsed > 0 else 0.0,
        },
        "folders": folders,
        "failures": [{"folder": f.folder, "uid": f.uid, "reason": f.reason} for f in stats.failures],
        "folder_errors": [{"folder": f.folder, "reason": f.reason} for f in stats.folder_errors],
        "warnings": list(stats.warnings),
        "throttle_waits": [{"side": w.side, "host": w.host, "at_seconds": w.at, "seconds": round(w.seconds, 3),
                            "reason": w.reason} for w in stats.waits],
    }


def render_run(report: dict[str, Any]) -> str:
    t = report["totals"]
    lines = []
    if report["dry_run"]:
        lines.append("Dry run: nothing was changed.")
        if t["folders_to_create"]:
            lines.append("Folders that would be created: " + ", ".join(t["folders_to_create"]))
        for name, f in report["folders"].items():
            if f["to_copy"] or f["found_on_destination"] or f["deleted_extra"] or f["flags_updated"]:
                extra = f", {f['deleted_extra']} {_would_go(report)}" if f["deleted_extra"] else ""
                flags = f", {f['flags_updated']} flag updates" if f["flags_updated"] else ""
                lines.append(f"  {name}: {f['to_copy']} messages, {_mb(f['to_copy_bytes'])} to copy{flags}{extra}")
        if t.get("folders_gone_from_source"):
            lines.append("Folders the source no longer has, that would leave the archive's latest snapshot: "
                         + _gone(t["folders_gone_from_source"]))
        lines.append(f"Would copy {t['to_copy']} messages ({_mb(t['to_copy_bytes'])}); "
                     f"{t['already_copied']} already copied.")
    else:
        lines.append(
            f"Folders created: {t['folders_created']}. Messages copied: {t['copied']} ({_mb(t['copied_bytes'])}), "
            f"already present: {t['already_copied'] + t['found_on_destination']}, failed: {t['failed']}."
        )
        if t.get("copied_within_destination"):
            lines.append(f"Of those, copied within the destination (a message already there in another folder, "
                         f"not downloaded again): {t['copied_within_destination']}.")
        if t["flags_updated"]:
            lines.append(f"Flags updated: {t['flags_updated']}.")
        if t["deleted_extra"] and report.get("destination_keeps_history"):
            lines.append(f"Deleted on the source since the last run, kept in the archive's earlier snapshots: "
                         f"{t['deleted_extra']}.")
        elif t["deleted_extra"]:
            lines.append(f"Deleted from the destination (--delete-extra): {t['deleted_extra']}.")
        if t.get("folders_gone_from_source"):
            lines.append("Folders deleted on the source since the last run, kept in the archive's earlier snapshots: "
                         + _gone(t["folders_gone_from_source"]) + ".")
        lines.append(f"Elapsed {report['elapsed_seconds']:.1f} s, {t['messages_per_second']} msgs/s.")
    if "preflight" in report:
        lines += [f"preflight: {f['rule']}: {f['folder']}: {f['detail']}"
                  + (f" (UID {', '.join(map(str, f['uids']))})" if f["uids"] else "") for f in report["preflight"]]
    lines += [f"Skipped {n}: {reason}." for reason, n in t["skipped"].items()]
    lines += [f"FAILED {f['folder']} UID {f['uid']}: {f['reason']}" for f in report["failures"]]
    lines += [f"FOLDER FAILED {f['folder']}: {f['reason']}" for f in report["folder_errors"]]
    lines += [f"warning: {w}" for w in report["warnings"]]
    waits = report.get("throttle_waits") or []
    if waits:
        lines.append(f"Throttled {len(waits)} time(s); waited {sum(w['seconds'] for w in waits):.1f} s in all, "
                     "as the server asked: " + "; ".join(f"{w['side']} {w['seconds']:.1f} s at {w['at_seconds']:.0f} s"
                                                         for w in waits[:5]) + ("; ..." if len(waits) > 5 else ""))
    return "\n".join(lines)


def _gone(folders: dict[str, int]) -> str:
    return ", ".join(f"{name} ({n} message{'s' if n != 1 else ''})" for name, n in folders.items())


def verify_report(diffs: list[FolderDiff], source: str, destination: str) -> dict[str, Any]:
    return {
        "report_version": REPORT_VERSION,
        "command": "verify",
        "source": source,
        "destination": destination,
        "identical": all(d.identical for d in diffs),
        "folders": [
            {
                "source": d.source,
                "destination": d.destination,
                "source_messages": d.source_count,
                "destination_messages": d.destination_count,
                "identical": d.identical,
                "missing": d.missing,
                "extra": d.extra,
                "flags_differ": d.flags_differ,
                "date_differs": d.date_differs,
                "damaged": d.damaged,
                "outside_filters": d.outside_filters,
                "held_once": d.held_once,
                "kept": d.kept,
                "error": d.error,
            }
            for d in diffs
        ],
    }


def _kept_lines(kept: list[dict]) -> list[str]:
    """Mail an archive keeps though the source deleted it, by the snapshot that found it gone."""
    since: dict[int, list[int]] = {}
    for k in kept:
        since.setdefault(k["since"], []).append(k["uid"])
    return [f"  kept, deleted on the source since snapshot {run}: {len(uids)} message(s), UID "
            f"{', '.join(map(str, uids))}" for run, uids in sorted(since.items())]


def render_verify(report: dict[str, Any]) -> str:
    lines = []
    for f in report["folders"]:
        status = "identical" if f["identical"] else "DIFFERENT"
        lines.append(f"{f['source']} -> {f['destination']}: "
                     f"{f['source_messages']} / {f['destination_messages']} messages, {status}")
        if f["error"]:
            lines.append(f"  error: {f['error']}")
        if f.get("outside_filters"):
            lines.append(f"  {f['outside_filters']} source message(s) outside the plan's filters: not compared")
        if f.get("held_once"):
            lines.append(f"  {len(f['held_once'])} exact duplicate(s) in the source folder, held once: the destination "
                         "keeps one copy per account (Gmail), not a difference")
        lines += [f"  missing on destination: source UID {m['source_uid']} sha256 {m['sha256'][:16]}"
                  for m in f["missing"]]
        lines += [f"  extra on destination: UID {m['destination_uid']} sha256 {m['sha256'][:16]}" for m in f["extra"]]
        lines += [f"  flags differ: source UID {m['source_uid']} {m['source_flags']} "
                  f"vs destination UID {m['destination_uid']} {m['destination_flags']}" for m in f["flags_differ"]]
        lines += [f"  damaged on the {m['side']}: UID {m['uid']}: {m['reason']}" for m in f["damaged"]]
        lines += [f"  date differs: source UID {m['source_uid']} {m['source_date']} "
                  f"vs destination UID {m['destination_uid']} {m['destination_date']}" for m in f["date_differs"]]
        lines += _kept_lines(f["kept"])
    lines.append("Identical." if report["identical"] else "Differences found.")
    return "\n".join(lines)
