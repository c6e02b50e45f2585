"""`migrator archive prune DIR --keep-daily 7 --keep-weekly 4 --keep-monthly 12`: drop old snapshots.

borg's vocabulary and rules (borg prune): the rules go in the order last, hourly, daily, weekly,
monthly, yearly. Each walks the snapshots newest first and keeps the newest snapshot of each
period (hour, day, ISO week, month, year, in local time; `last`: each snapshot is its own period)
that no earlier rule kept, until it has kept N (-1: no limit). A snapshot kept by an earlier rule
does not count towards a later rule. A snapshot whose run did not finish (killed) counts for no
rule; the latest snapshot is always kept (it is the archive's current state).

Dropping a snapshot removes its `runs` row, then what only it needed: message rows in no remaining
snapshot and flag_history rows no remaining snapshot reads, in one transaction. Their bytes stay in
the data files until `archive compact` (archive_compact.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from migrator.errors import UsageError
from migrator.stores.archive_check import archive_dir
from migrator.stores.archive_index import ArchiveIndex
from migrator.stores.archive_snapshots import stamp

RULES = (("last", None), ("hourly", "%Y-%m-%d %H"), ("daily", "%Y-%m-%d"), ("weekly", "%G-%V"),
         ("monthly", "%Y-%m"), ("yearly", "%Y"))


@dataclass(frozen=True)
class Snapshot:
    id: int
    started: float
    finished: float | None


@dataclass
class PruneResult:
    kept: dict[int, str] = field(default_factory=dict)  # snapshot -> why ("daily #3")
    dropped: list[Snapshot] = field(default_factory=list)
    snapshots: list[Snapshot] = field(default_factory=list)
    messages_dropped: int = 0


def choose(snapshots: list[Snapshot], keep: dict[str, int]) -> dict[int, str]:
    """Snapshot id -> the rule that keeps it; those not in it go."""
    if not any(keep.values()):
        raise UsageError("archive prune needs at least one --keep-* option (--keep-last, --keep-daily ...)")
    kept: dict[int, str] = {}
    finished = sorted((s for s in snapshots if s.finished is not None), key=lambda s: (s.started, s.id), reverse=True)
    for rule, pattern in RULES:
        wanted = keep.get(rule, 0)
        if not wanted:
            continue
        last, count = None, 0
        for s in finished:
            period = s.id if pattern is None else time.strftime(pattern, time.localtime(s.started))
            if period == last:
                continue
            last = period
            if s.id not in kept:
                count += 1
                kept[s.id] = f"{rule} #{count}"
                if count == wanted:
                    break
    if snapshots:
        kept.setdefault(max(s.id for s in snapshots), "latest")
    return kept


def prune(path: str, keep: dict[str, int], dry_run: bool) -> PruneResult:
    arc = ArchiveIndex.open(archive_dir(path), create=False, readonly=dry_run)
    try:
        result = PruneResult()
        result.snapshots = [Snapshot(*row) for row in arc.read("SELECT id, started, finished FROM runs ORDER BY id")]
        result.kept = choose(result.snapshots, keep)
        result.dropped = [s for s in result.snapshots if s.id not in result.kept]
        if result.dropped and not dry_run:
            result.messages_dropped = arc.write(lambda db: _drop(db, [s.id for s in result.dropped]))
        return result
    finally:
        arc.release()


def _drop(db, runs: list[int]) -> int:
    """The snapshots' rows gone, and every row only they needed; returns the message rows dropped."""
    db.executemany("DELETE FROM runs WHERE id=?", [(r,) for r in runs])
    # In snapshot R when added_run <= R < removed_run: none of the remaining ones.
    gone = db.execute("DELETE FROM messages WHERE removed_run IS NOT NULL AND NOT EXISTS (SELECT 1 FROM runs k "
                      "WHERE k.id >= messages.added_run AND k.id < messages.removed_run)").rowcount
    # A flag_history row holds the flags of the snapshots from the change before it (or the
    # message's addition) up to its own run: it goes when none of those remains, or its message did.
    stale = []
    history: dict[tuple[int, int], list[int]] = {}
    for fid, uid, until in db.execute("SELECT folder_id, uid, until_run FROM flag_history ORDER BY until_run"):
        history.setdefault((fid, uid), []).append(until)
    remaining = [r for (r,) in db.execute("SELECT id FROM runs")]
    added = {(fid, uid): a for fid, uid, a in db.execute(
        "SELECT folder_id, uid, added_run FROM messages WHERE (folder_id, uid) IN "
        "(SELECT folder_id, uid FROM flag_history)")}
    for key, untils in history.items():
        lower = added.get(key)
        for until in untils:
            if lower is None or not any(lower <= r < until for r in remaining):
                stale.append((*key, until))
            lower = until if lower is not None else None
    db.executemany("DELETE FROM flag_history WHERE folder_id=? AND uid=? AND until_run=?", stale)
    return gone


def render_prune(result: PruneResult, dry_run: bool) -> str:
    lines = []
    for s in sorted(result.snapshots, key=lambda s: s.id, reverse=True):
        when = stamp(s.started) + ("" if s.finished is not None else " (not finished)")
        if s.id in result.kept:
            lines.append(f"Keeping snapshot {s.id:>6}  {when}  ({result.kept[s.id]})")
        else:
            lines.append(f"{'Would prune' if dry_run else 'Pruning'} snapshot {s.id:>6}  {when}")
    n = len(result.dropped)
    if dry_run:
        lines.append(f"{n} snapshot(s) would be pruned, {len(result.kept)} kept (--dry-run: nothing changed).")
    else:
        lines.append(f"{n} snapshot(s) pruned, {len(result.kept)} kept; {result.messages_dropped} message(s) no "
                     "snapshot holds any more. `migrator archive compact DIR` frees their bytes.")
    return "\n".join(lines)
